"""``TadsrError``: the one base of the errors tadsr raises for a user's input (a file, a setting, a device).

Library code raises a subclass whose message is one line naming the file or the setting and the problem; the
``tadsr`` command prints it as ``tadsr: error: MESSAGE`` and exits 1, in one place (``tadsr.cli``). Anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class TadsrError(Exception):
    """An input tadsr cannot use; the message says which and why, in one line."""


class ConfigError(TadsrError, ValueError):
    """A config file, override or option value that does not fit (the message names the key)."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name: third-party errors in one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class OutputError(TadsrError, OSError):
    """An output folder or file that cannot be written."""


class NotFoundError(TadsrError, FileNotFoundError):
    """A file, folder or image set the user named does not exist or holds nothing usable."""


class MissingExtraError(TadsrError, ImportError):
    """An optional dependency a command needs is not installed (the message says which extra to install)."""


class BackendError(TadsrError, RuntimeError):
    """A network run failed in a foreign runtime (ONNX Runtime, diffusers), or returned what it must not (a wrong
    shape, non-finite values). Raised at the boundary that calls the runtime, so that a batch names the file and
    goes on."""
