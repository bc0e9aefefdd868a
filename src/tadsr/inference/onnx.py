"""Running an exported one-step graph (``tadsr export``) with ONNX Runtime, through the same Upscaler.

``OnnxUpscaler`` is an ``Upscaler`` whose network is an ``onnxruntime.InferenceSession``: the same reading, padding,
tiling (each tile its slice of one noise draw per image, ``tadsr.inference.tiling``), colour handling, output
scaling and file guarantees as the PyTorch path, so a dynamic-size file gives the PyTorch model's pictures (within
float rounding). A fixed-size file (noise embedded) runs tiles of exactly its size.

Only the file's graph is trusted: the session uses the CPU (or CUDA) execution provider, no custom-op library is
registered, and a file without tadsr's metadata is refused in one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tadsr.config import ModelConfig, model_config_from_json
from tadsr.errors import ConfigError, MissingExtraError, TadsrError, first_line
from tadsr.inference.tiling import tiled_super_resolve
from tadsr.inference.upscaler import UpscaleOptions, Upscaler
from tadsr.model import ModelNotFoundError


class OnnxModel:
    """An exported graph and what its metadata says: ``config`` (the model's), ``noise`` ("input" or "embedded"),
    ``tile`` (the fixed input size, 0 when dynamic) and ``seed`` (the embedded noise's)."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise MissingExtraError("ONNX models need onnxruntime, an optional extra: pip install 'tadsr[onnx]'") \
                from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelNotFoundError(f"{self.path}: no such model file")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options,
                                                        providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # truncated, not ONNX, an op ONNX Runtime does not know
            raise ConfigError(f"{self.path}: not a loadable ONNX model ({type(err).__name__}: {first_line(err)})") \
                from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("producer") != "tadsr" or "model_config" not in meta:
            raise ConfigError(f"{self.path}: an ONNX model not made by `tadsr export` (no tadsr metadata)")
        try:
            self.config: ModelConfig = model_config_from_json(meta["model_config"])
            self.noise, self.tile, self.seed = meta["noise"], int(meta["tile"]), int(meta["seed"])
        except (KeyError, ValueError, TadsrError) as err:
            raise ConfigError(f"{self.path}: its tadsr metadata is damaged ({first_line(err)})") from None
        self.metadata = dict(meta)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, lr: Tensor, noise: Tensor) -> Tensor:
        """(N, 3, h, w) tiles in [-1, 1] and their noise -> (N, 3, h s, w s) in [-1, 1], one session run per tile."""
        outs = []
        for k in range(lr.shape[0]):
            feed = {"lr": ((lr[k:k + 1].float().cpu() + 1) / 2).numpy()}
            if "noise" in self.inputs:
                feed["noise"] = noise[k:k + 1].float().cpu().numpy()
            outs.append(torch.from_numpy(np.asarray(self.session.run(["hr"], feed)[0])))
        return torch.cat(outs) * 2 - 1


class OnnxUpscaler(Upscaler):
    """``Upscaler`` over an ``OnnxModel`` (module docstring). A fixed-size file runs tiles of its size, its own
    seed's noise; a dynamic one follows ``tile`` and ``seed`` as the PyTorch model does."""

    def __init__(self, onnx_model: OnnxModel, **options: Any) -> None:
        self.onnx = onnx_model
        self.model = onnx_model  # what the tiling reads: its config
        self.device, self.dtype = torch.device("cpu"), torch.float32
        if onnx_model.noise == "embedded":
            options = {**options, "tile": onnx_model.tile, "seed": onnx_model.seed}
        if options.get("steps") not in (None, 1):
            raise ConfigError(f"{onnx_model.path}: an exported model runs one step")
        options.pop("channels_last", None)
        options.pop("compile", None)
        self.options = UpscaleOptions(**options)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **options: Any) -> OnnxUpscaler:
        return cls(OnnxModel(path), **options)

    def network_upscale(self, lr: Tensor, progress: Callable[[int, int], None] | None = None) -> Tensor:
        opts = self.options
        if self.onnx.noise == "embedded":
            return self._fixed_tiles(lr, progress)
        return tiled_super_resolve(self.onnx, lr.cpu(), tile=opts.tile, overlap=opts.tile_overlap, steps=1,
                                   seed=opts.seed, batch_size=opts.batch_size, progress=progress, network=self.onnx)

    def _fixed_tiles(self, lr: Tensor, progress: Callable[[int, int], None] | None) -> Tensor:
        """A fixed-size graph: every tile exactly its size (the image reflect-padded up to it where smaller)."""
        from tadsr.inference.padding import crop_to, pad_to_multiple

        t = self.onnx.tile
        h, w = lr.shape[-2:]
        padded = lr if (h >= t and w >= t) else pad_to_multiple(lr, t)[0]
        opts = self.options
        overlap = min(opts.tile_overlap, t // 4)
        out = tiled_super_resolve(self.onnx, padded.cpu(), tile=t, overlap=overlap, steps=1, seed=opts.seed,
                                  progress=progress, network=self.onnx)
        return crop_to(out, (h * self.scale, w * self.scale))

    def tile_size(self) -> int:
        return self.onnx.tile if self.onnx.noise == "embedded" else super().tile_size()
