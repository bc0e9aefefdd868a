"""Atomic file writes, the one implementation every writer uses (images, model files, checkpoints, caches), and the
content digest of a file or folder (``content_digest``).

A file is written to a temporary sibling (same folder, so the same file system) and renamed over the target: a
reader, a crash or a kill never sees a half-written file, and the temporary file is removed on any failure (the
``tadsr`` command turns SIGTERM into an exception, so a terminated write cleans up too). A SIGKILL leaves the
temporary file behind: its name, ``.NAME.PID.XXXXXXXX.tmp``, carries the writer's process id, and the first write
of a later process into that folder removes such files whose process is gone (``remove_stale_temporaries``),
never a name of another pattern or a live writer's file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tadsr.errors import OutputError

TEMPORARY_STEM_BYTES = 200  # "." + 200 + "." + pid (<= 10) + "." + 8 random + ".tmp" <= 225 bytes: below every
# file-name limit


def temporary_sibling(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` (same file system, so the final rename is atomic), with the permissions
    a plain ``open`` would give (mkstemp's are owner-only). Returns (fd, name)."""
    stem = path.name.encode()[:TEMPORARY_STEM_BYTES].decode(errors="ignore")  # any legal name stays legal
    _clean_once(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{stem}.{os.getpid()}.", suffix=".tmp")
    os.fchmod(fd, _plain_mode())
    return fd, tmp


def _plain_mode() -> int:
    """0666 less the umask: the mode ``open`` gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there; OutputError (one line) otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputError(f"{folder}: output folder is not writable ({err.strerror or err})") from err


TEMPORARY_NAME = re.compile(r"^\..+?(?:\.(\d+))?\.[A-Za-z0-9_]{8}\.tmp$")  # temporary_sibling's names (mkstemp:
# 8 random characters), with the writer's pid (those of tadsr 0.1: without it)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed write left in ``folder``: names of ``temporary_sibling``'s pattern whose
    process is not running on this machine (a name without a process id: always). Returns them."""
    removed = []
    for path in folder.glob(".*.tmp") if folder.is_dir() else []:
        match = TEMPORARY_NAME.match(path.name)
        pid = match.group(1) if match else None
        if match and path.is_file() and not (pid is not None and process_running(int(pid))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def process_running(pid: int) -> bool:
    """Whether the process ``pid`` runs on this machine (this one's own included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**31  # another user's live process; a number no pid can be is not one
    return True


_CLEANED: set[Path] = set()  # the folders this process has cleaned


def _clean_once(folder: Path) -> None:
    """``remove_stale_temporaries`` on the first write of this process into ``folder``, each file said in a
    warning."""
    key = folder.absolute()
    if key in _CLEANED:
        return
    _CLEANED.add(key)
    for path in remove_stale_temporaries(folder):
        warnings.warn(f"{path}: removed a temporary file left by an interrupted write", RuntimeWarning,
                      stacklevel=4)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` fills a temporary sibling of ``path``, which is then renamed to ``path``."""
    path = Path(path)
    fd, tmp = temporary_sibling(path)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _plain_mode())  # a writer may have replaced the file (safetensors writes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` (tensors and plain containers only: read back with ``weights_only=True``), atomically."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files: each one's path relative to the folder, then its
    bytes, in sorted order. Read in 1 MiB blocks."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
