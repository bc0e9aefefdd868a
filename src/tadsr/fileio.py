"""Small file helpers shared by every writer (images, model files, checkpoints)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temporary_sibling(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` (same file system, so the final rename is atomic), with the permissions
    a plain ``open`` would give (mkstemp's are owner-only). Returns (fd, name)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp
