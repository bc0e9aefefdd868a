"""The bounds on every size a user or a file can give, in one place: checked before anything is allocated.

``MAX_TILE`` bounds a tile side in LR pixels wherever one is given: ``--tile`` of ``upscale``, ``evaluate``,
``serve`` and ``bench``, ``tadsr export --tile`` and the ``tile`` an ONNX file's metadata claims. 4096 LR pixels is
a 16384-pixel output side at x4 (268 M output pixels): beyond it a tile is no longer a tile (0 means the whole image
at once, for any size within ``--max-pixels``).
"""

from __future__ import annotations

from tadsr.errors import ConfigError

MAX_TILE = 4096


def check_tile(tile: int, name: str = "--tile") -> int:
    """``tile`` if 0 <= tile <= MAX_TILE; ConfigError naming ``name`` (the option or the file's key) otherwise."""
    if not 0 <= tile <= MAX_TILE:
        raise ConfigError(f"{name}: {tile} is not a tile size (0, the whole image, to {MAX_TILE} LR pixels)")
    return tile
