"""tadsr: one-step diffusion super-resolution by time-aware distillation (TAD-SR, He et al., arXiv 2408.07476).

From Python: ``tadsr.Upscaler(tadsr.open_model(path_or_name, ...), tile=...)`` upscales images as ``tadsr upscale``
does, for any model it runs (a tadsr file, an embedded name, an ONNX graph, an SD student, a diffusers folder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tadsr.version import __version__

__all__ = ["Upscaler", "__version__", "open_model"]

if TYPE_CHECKING:
    from tadsr.backends import open_model
    from tadsr.inference.upscaler import Upscaler


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import tadsr` stays light (no OpenCV, no networks).
    if name == "Upscaler":
        from tadsr.inference.upscaler import Upscaler

        return Upscaler
    if name == "open_model":
        from tadsr.backends import open_model

        return open_model
    raise AttributeError(f"module 'tadsr' has no attribute {name!r}")
