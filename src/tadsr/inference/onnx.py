"""Running an exported one-step graph (``tadsr export``) with ONNX Runtime, through the same Upscaler.

``OnnxModel`` is a ``Backend`` (``tadsr.inference.backend``) whose network is an ``onnxruntime.InferenceSession``:
``Upscaler`` gives it the same reading, padding, tiling (each tile its slice of one noise draw per image, the
model's own ``model_noise``), colour handling, output scaling and file guarantees as the PyTorch path, so a
dynamic-size file gives the PyTorch model's pictures (within float rounding). A fixed-size file (noise embedded)
runs tiles of exactly its size (``fixed_tile``) with its own noise (``fixed_seed``).

Only the file's graph is trusted: the session uses the CPU (or CUDA) execution provider, no custom-op library is
registered, and a file without tadsr's metadata is refused in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tadsr.config import ModelConfig, model_config_from_json
from tadsr.errors import ConfigError, MissingExtraError, TadsrError, first_line
from tadsr.inference.backend import ModelGeometry, model_noise
from tadsr.model import ModelNotFoundError


class OnnxModel(ModelGeometry):
    """An exported graph as a ``Backend``, and what its metadata says: ``config`` (the model's), ``noise`` ("input"
    or "embedded"), ``tile`` (the fixed input size, 0 when dynamic) and ``seed`` (the embedded noise's). It runs on
    ONNX Runtime's CPU execution provider (``providers`` otherwise), one step, at the file's precision."""

    device = torch.device("cpu")  # where its inputs go: onnxruntime reads numpy arrays

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

    @property
    def fixed_tile(self) -> int:
        """The one input size of a file exported with ``--tile N`` (its noise embedded); 0 for a dynamic file."""
        return self.tile if self.noise == "embedded" else 0

    @property
    def fixed_seed(self) -> int:
        return self.seed

    def draw_noise(self, height: int, width: int, seed: int) -> Tensor:
        """The exported model's prior noise (``model_noise``): what `tadsr upscale --seed` gives its PyTorch file."""
        return model_noise(self.config, height, width, seed)

    def run(self, lr: Tensor, noise: Tensor) -> Tensor:
        """(N, 3, h, w) tiles in [-1, 1] and their noise (1, N, C, h / f, w / f) -> (N, 3, h s, w s) in [-1, 1], one
        session run per tile (a fixed-size file ignores the noise: its own is inside)."""
        outs = []
        for k in range(lr.shape[0]):
            feed = {"lr": ((lr[k:k + 1].float().cpu() + 1) / 2).numpy()}
            if "noise" in self.inputs:
                feed["noise"] = noise[0, k:k + 1].float().cpu().numpy()
            outs.append(torch.from_numpy(np.asarray(self.session.run(["hr"], feed)[0])))
        return torch.cat(outs) * 2 - 1
