"""Running an exported one-step graph (``tadsr export``) with ONNX Runtime, through the same Upscaler.

``OnnxModel`` is a ``Backend`` (``tadsr.inference.backend``) whose network is an ``onnxruntime.InferenceSession``:
``Upscaler`` gives it the same reading, padding, tiling (each tile its slice of one noise draw per image, the
model's own ``model_noise``), colour handling, output scaling and file guarantees as the PyTorch path, so a
dynamic-size file gives the PyTorch model's pictures (within float rounding). A fixed-size file (noise embedded)
runs tiles of exactly its size (``fixed_tile``) with its own noise (``fixed_seed``).

Only the file's graph is trusted: the session uses the CPU (or CUDA) execution provider, no custom-op library is
registered, and a file without tadsr's metadata is refused in one line. What the file claims is checked when it is
opened, before any of it is used: every metadata value (``noise``, ``tile`` within ``tadsr.limits.MAX_TILE``,
``seed``, and ``scale``, ``size_multiple``, ``noise_factor``, ``noise_channels`` against the model config) and the
graph's inputs and output (names, element types, ranks, fixed sizes) against what `tadsr export` writes; a file
that fails is one line naming it. At run time an ONNX Runtime exception becomes a ``BackendError`` naming the file
(the tiler checks what the graph returned), so that a batch names the image and goes on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tadsr.config import ModelConfig, model_config_from_json
from tadsr.errors import BackendError, ConfigError, MissingExtraError, TadsrError, first_line
from tadsr.inference.backend import ModelGeometry, model_noise
from tadsr.limits import check_tile
from tadsr.model import ModelNotFoundError

NOISES = ("input", "embedded")  # the noise a graph takes as its second input, or holds (fixed size, --tile N)
MAX_SEED = 2**63  # seeds are in [0, 2^63): what every seeded generator accepts
FLOAT = "tensor(float)"  # the element type of every input and output `tadsr export` writes (fp16 files included)


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
        except (KeyError, ValueError, TadsrError) as err:
            raise ConfigError(f"{self.path}: its tadsr metadata is damaged ({first_line(err)})") from None
        self.noise, self.tile, self.seed = self._check_metadata(meta)
        self.metadata = dict(meta)
        self._check_graph()
        self.inputs = [i.name for i in self.session.get_inputs()]

    def _check_metadata(self, meta: dict[str, str]) -> tuple[str, int, int]:
        """(noise, tile, seed) from the metadata, each value checked, and the geometry against the model config;
        ConfigError naming the file and the key otherwise."""
        def bad(key: str, problem: str) -> ConfigError:
            return ConfigError(f"{self.path}: metadata {key}: {problem}")

        def integer(key: str) -> int:
            if key not in meta:
                raise bad(key, "missing")
            try:
                return int(meta[key])
            except ValueError:
                raise bad(key, f"{meta[key][:40]!r} is not an integer") from None

        noise = meta.get("noise")
        if noise not in NOISES:
            raise bad("noise", f"{str(noise)[:40]!r} is not one of {', '.join(NOISES)}")
        tile, seed = check_tile(integer("tile"), f"{self.path}: metadata tile"), integer("seed")
        if not 0 <= seed < MAX_SEED:
            raise bad("seed", f"{seed} is not a seed (0 to 2^63 - 1)")
        cfg = self.config
        for key, value in (("scale", cfg.scale), ("size_multiple", cfg.lr_multiple),
                           ("noise_factor", cfg.unet.lq_factor), ("noise_channels", cfg.unet.in_channels)):
            if key in meta and (claimed := integer(key)) != value:
                raise bad(key, f"{claimed}, but its model config says {value}")
        multiple = cfg.lr_multiple
        if noise == "input" and tile != 0:
            raise bad("tile", f"{tile}, but a file with the noise an input has a dynamic size (tile 0)")
        if noise == "embedded" and (tile == 0 or tile % multiple):
            raise bad("tile", f"{tile} is not a positive multiple of the model's size multiple {multiple} (the noise "
                              "embedded is for one size)")
        return noise, tile, seed

    def _check_graph(self) -> None:
        """The graph's inputs and output against what `tadsr export` writes: ``lr`` (1, 3, H, W), with the noise an
        input also ``noise`` (1, C, H / f, W / f), and ``hr`` (1, 3, H s, W s), all float32; H and W dynamic, or the
        metadata's tile for a fixed-size file. ConfigError naming the file otherwise."""
        cfg, tile, s = self.config, self.fixed_tile, self.config.scale
        want_in = {"lr": (1, 3, tile or None, tile or None)}
        if self.noise == "input":
            want_in["noise"] = (1, cfg.unet.in_channels, None, None)
        inputs = {i.name: i for i in self.session.get_inputs()}  # required ones (initializers are not listed)
        outputs = {o.name: o for o in self.session.get_outputs()}
        expected = " and ".join(want_in)
        for name in want_in:
            if name not in inputs:
                raise ConfigError(f"{self.path}: the graph has no input {name!r} (it has {_names(inputs)}); a "
                                  f"`tadsr export` file with noise {self.noise!r} takes {expected}")
        for name in inputs:
            if name not in want_in:
                raise ConfigError(f"{self.path}: the graph needs an input {name!r} that tadsr does not feed; a "
                                  f"`tadsr export` file with noise {self.noise!r} takes {expected}")
        if "hr" not in outputs:
            raise ConfigError(f"{self.path}: the graph has no output 'hr' (it has {_names(outputs)})")
        ports = [("input", inputs[name], want) for name, want in want_in.items()]
        ports.append(("output", outputs["hr"], (1, 3, tile * s or None, tile * s or None)))
        for kind, port, want in ports:
            if port.type != FLOAT:
                raise ConfigError(f"{self.path}: its {kind} {port.name!r} is {port.type}; a `tadsr export` file's is "
                                  f"{FLOAT} (float32)")
            shape = port.shape
            if shape is None or len(shape) != 4:
                raise ConfigError(f"{self.path}: its {kind} {port.name!r} has shape {shape}; a `tadsr export` "
                                  "file's has 4 dimensions")
            for axis, (got, size) in enumerate(zip(shape, want, strict=True)):
                fixed = isinstance(got, int) and got > 0  # ONNX Runtime shows a dynamic axis as a name or None
                if (size is None and fixed and axis >= 2) or (size is not None and fixed and got != size):
                    wanted = ["H" if v is None and a == 2 else "W" if v is None else v for a, v in enumerate(want)]
                    raise ConfigError(f"{self.path}: its {kind} {port.name!r} has shape {_shape(shape)}; its metadata "
                                      f"(noise {self.noise}, tile {self.tile}) means {_shape(wanted)}")

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
            try:
                out = self.session.run(["hr"], feed)[0]
            except Exception as err:  # onnxruntime's own exceptions are none of Python's: one line naming the file
                raise BackendError(f"ONNX Runtime failed running {self.path}: {type(err).__name__}: "
                                   f"{first_line(err)}") from None
            if not isinstance(out, np.ndarray) or out.dtype != np.float32:
                raise BackendError(f"{self.path}: its output 'hr' is {getattr(out, 'dtype', type(out).__name__)}, not "
                                   "float32")
            outs.append(torch.from_numpy(out))
        return torch.cat(outs) * 2 - 1


def _names(ports: dict[str, object]) -> str:
    return ", ".join(repr(name) for name in ports) or "none"


def _shape(shape: list) -> str:
    """A shape for a message; a dynamic axis by its name, its white space (a newline included) made one space."""
    return "(" + ", ".join(" ".join(str(v).split()) for v in shape) + ")"
