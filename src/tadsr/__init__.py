"""tadsr: one-step diffusion super-resolution by time-aware distillation (TAD-SR, He et al., arXiv 2408.07476)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Upscaler", "__version__"]

if TYPE_CHECKING:
    from tadsr.inference.upscaler import Upscaler


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import tadsr` stays light (no OpenCV, no networks).
    if name == "Upscaler":
        from tadsr.inference.upscaler import Upscaler

        return Upscaler
    raise AttributeError(f"module 'tadsr' has no attribute {name!r}")
