"""Atomic file writes, the one implementation every writer uses (images, model files, checkpoints, caches).

A file is written to a temporary sibling (same folder, so the same file system) and renamed over the target: a
reader, a crash or a kill never sees a half-written file, and the temporary file is removed on any failure.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temporary_sibling(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` (same file system, so the final rename is atomic), with the permissions
    a plain ``open`` would give (mkstemp's are owner-only). Returns (fd, name)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there; OutputError (one line) otherwise."""
    from tadsr.errors import OutputError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputError(f"{folder}: output folder is not writable ({err.strerror or err})") from err


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` fills a temporary sibling of ``path``, which is then renamed to ``path``."""
    path = Path(path)
    fd, tmp = temporary_sibling(path)
    os.close(fd)
    try:
        write(Path(tmp))
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
