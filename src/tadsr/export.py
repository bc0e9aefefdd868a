"""`tadsr export`: the one-step path of a model as one ONNX graph, for ONNX Runtime, chaiNNer and the like.

The graph (``OneStepGraph``): LR image in [0, 1] -> x2 - 1 -> bicubic x scale -> first-stage encode -> z_T = z_y +
kappa sqrt(eta_T) noise -> one network call at t = T-1 -> decode -> HR in [0, 1], clamped. Two forms:

* ``noise="input"`` (the default): inputs ``lr`` (1, 3, H, W) and ``noise`` (1, C, H / f, W / f), H and W dynamic
  multiples of the model's size multiple. The noise is a second input so that a tiled run gives each tile its slice
  of one draw for the whole image, as `tadsr upscale` does: ``tadsr upscale --model FILE.onnx`` (onnxruntime) then
  reproduces the PyTorch output. Draw it as ``torch.randn((1, C, H/f, W/f), generator=torch.Generator()
  .manual_seed(seed))`` (``tadsr.inference.backend.model_noise``).
* ``noise="embedded"`` (``--tile N``): one input ``lr`` fixed at N x N, the noise of ``seed`` for that size stored
  in the graph: a plain image-to-image model for applications that feed one tensor (fixed size, said in the
  metadata; they tile themselves).

The exporter is PyTorch's dynamo-based one (``torch.onnx.export(..., dynamo=True)``), opset ``OPSET``; the window
attention runs in plain ops while tracing (``tadsr.nets.swin.portable_attention``). The file's metadata
(``metadata_props``) carries ``tadsr_version``, ``scale``, ``size_multiple``, ``noise``, ``seed``, ``tile``,
``precision`` (fp32, or fp16 with ``--fp16``: float16 weights and compute, float32 inputs and output) and the model
config (JSON). A file is written whole or not at all (a temporary name, renamed); an existing file is replaced only
with ``overwrite`` (``--overwrite``). ``--tile`` is at most ``tadsr.limits.MAX_TILE`` and the graph (weights and
embedded noise) must fit ONNX's 2 GiB for one file: both are checked before anything is built. The exporter's own
notices that are not the user's business (torchvision's ops it skips, PyTorch's deprecations inside it, its axis
names) are silenced, by category and message.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from tadsr.config import config_to_json
from tadsr.errors import ConfigError, MissingExtraError, OutputError, TadsrError, first_line
from tadsr.fileio import atomic_write
from tadsr.inference.backend import model_noise
from tadsr.inference.padding import round_up
from tadsr.inference.pipeline import super_resolve
from tadsr.limits import MAX_TILE, check_tile
from tadsr.model import SRModel

OPSET = 18
NoiseInput = Literal["input", "embedded"]
MAX_FILE_BYTES = 2**31  # protobuf's limit for one message: an ONNX file without external data

# The exporter's notices that say nothing about the user's model or file (torch 2.9-2.13): (category, message regex)
QUIET_WARNINGS = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),  # PyTorch's pytree, inside torch.export
    (UserWarning, r"# The axis name: .* will not be used, since it shares the same shape constraints"),
)
QUIET_LOGGERS = ("torch.onnx._internal.exporter._registration",)  # "torchvision is not installed. Skipping ..."


class ExportError(TadsrError, RuntimeError):
    """The exporter failed; nothing was written."""


class OneStepGraph(nn.Module):
    """The one-step path in [0, 1]: ``forward(lr, noise)`` or, with a fixed ``noise`` buffer, ``forward(lr)``."""

    def __init__(self, model: SRModel, noise: Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("fixed_noise", noise if noise is not None else torch.empty(0), persistent=False)

    def forward(self, lr: Tensor, noise: Tensor | None = None) -> Tensor:
        noise = self.fixed_noise if noise is None else noise
        dtype = next(self.model.unet.parameters()).dtype  # float16 for --fp16: inputs and output stay float32
        hr = super_resolve(self.model, (lr * 2 - 1).to(dtype), steps=1, noise=noise.to(dtype))
        return ((hr + 1) / 2).float()


def import_onnx_exporter() -> None:
    """onnx and onnxscript (the dynamo exporter's needs), or one line saying how to install them."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise MissingExtraError("tadsr export needs onnx and onnxscript, an optional extra: "
                                "pip install 'tadsr[onnx]'") from None


def check_target(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path`` if an export may write it: OutputError (one line naming it) for a folder, or for an existing file
    unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; the output must be a .onnx file")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    return path


def check_size(model: SRModel, tile: int, fp16: bool = False) -> int:
    """The side of the exported input for ``tile`` (0: dynamic), checked before anything is built: ``tile`` within
    ``MAX_TILE`` (also once rounded up to the size multiple), and the file (weights and, for a fixed size, the
    embedded noise) within ONNX's 2 GiB. ConfigError naming ``--tile`` otherwise."""
    cfg = model.config
    check_tile(tile, "--tile")
    side = round_up(tile, cfg.lr_multiple)
    if side > MAX_TILE:
        raise ConfigError(f"--tile: {tile} rounds up to {side}, this model's multiple, over {MAX_TILE} LR pixels")
    weights = sum(p.numel() * (2 if fp16 and p.is_floating_point() else p.element_size()) for p in model.parameters())
    noise = cfg.unet.in_channels * (side // cfg.unet.lq_factor) ** 2 * 4  # float32, for a fixed size only
    if weights + noise > MAX_FILE_BYTES:
        raise ConfigError(f"--tile: {tile} would embed {noise / 2**20:,.0f} MiB of noise beside {weights / 2**20:,.0f} "
                          f"MiB of weights, over the {MAX_FILE_BYTES // 2**30} GiB an ONNX file holds; give a smaller "
                          "--tile, or none (a dynamic-size file)")
    return side


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's notices of ``QUIET_WARNINGS`` and ``QUIET_LOGGERS`` silenced; anything else still shows."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for category, message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def export_onnx(model: SRModel, path: str | os.PathLike, tile: int = 0, seed: int = 0,
                teacher_one_step: bool = False, fp16: bool = False, overwrite: bool = False) -> dict[str, str]:
    """Write ``model``'s one-step graph to ``path`` (module docstring); returns the metadata written.

    ``tile`` 0: dynamic size, noise an input; ``tile`` N: fixed N x N input (rounded up to the size multiple) with
    the noise of ``seed`` embedded. A teacher (T > 1 steps) is refused unless ``teacher_one_step`` (then its one
    step is the posterior-mean estimate x0-hat at t = T-1). ``fp16``: the model's weights and compute in float16
    (the VQ quantiser's distances and the normalisations stay float32), inputs and output float32. An existing
    ``path`` is replaced only with ``overwrite``; ``tile`` and the file's size are checked (``check_size``) before
    anything is built."""
    path = check_target(path, overwrite)
    import_onnx_exporter()
    cfg = model.config
    if cfg.role == "teacher" and cfg.schedule.num_steps > 1 and not teacher_one_step:
        raise ConfigError(f"a teacher samples {cfg.schedule.num_steps} steps; only a one-step path exports "
                          "(distil a student, or pass --teacher-one-step for the teacher's x0-hat at T-1)")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"--seed: {seed} is not a seed (0 to 2^63 - 1)")
    check_size(model, tile, fp16)
    m, f, channels = cfg.lr_multiple, cfg.unet.lq_factor, cfg.unet.in_channels
    model = copy.deepcopy(model).half().eval() if fp16 else model.float().eval()
    if tile:
        side = round_up(tile, m)
        noise = model_noise(cfg, side, side, seed)[0]  # what `tadsr upscale --seed` gives a side x side image
        graph, args = OneStepGraph(model, noise), (torch.rand(1, 3, side, side),)
        dynamic, kind = None, "embedded"
    else:
        side = 4 * m
        graph = OneStepGraph(model)
        args = (torch.rand(1, 3, side, side), torch.randn(1, channels, side // f, side // f))
        kh, kw = torch.export.Dim("kh", min=1, max=4096 // m), torch.export.Dim("kw", min=1, max=4096 // m)
        dynamic = {"lr": {2: m * kh, 3: m * kw}, "noise": {2: m // f * kh, 3: m // f * kw}}
        kind = "input"
    metadata = {"producer": "tadsr", "tadsr_version": _version(), "scale": str(cfg.scale), "size_multiple": str(m),
                "noise": kind, "noise_channels": str(channels), "noise_factor": str(f), "seed": str(seed),
                "tile": str(side if tile else 0), "role": cfg.role, "model_config": config_to_json(cfg),
                "opset": str(OPSET), "precision": "fp16" if fp16 else "fp32",
                "inputs": "lr (1,3,H,W) in [0,1]" + ("" if tile else "; noise (1,C,H/f,W/f)"),
                "output": "hr (1,3,H*scale,W*scale) in [0,1]"}
    graph.eval()
    try:
        import onnx

        from tadsr.nets.swin import portable_attention

        with torch.no_grad(), portable_attention(), quiet_exporter():
            program = torch.onnx.export(graph, args, dynamo=True, opset_version=OPSET, dynamic_shapes=dynamic,
                                        input_names=["lr"] if tile else ["lr", "noise"], output_names=["hr"],
                                        verbose=False)
        proto = program.model_proto
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
    except Exception as err:  # the exporter's own failures: one line, nothing written
        raise ExportError(f"{path}: the ONNX exporter failed: {type(err).__name__}: {first_line(err)}") from None
    try:
        atomic_write(path, lambda tmp: onnx.save_model(proto, str(tmp), save_as_external_data=False))
    except OSError as err:  # a full disk, a permission: one line, no file left (nor its temporary)
        raise OutputError(f"{path}: could not be written ({err.strerror or first_line(err)})") from None
    except Exception as err:  # the serialiser's (a graph over protobuf's 2 GiB): one line, no file left
        raise ExportError(f"{path}: the ONNX file could not be written: {type(err).__name__}: {first_line(err)}") \
            from None
    return metadata


def _version() -> str:
    from tadsr.version import __version__

    return __version__


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an exported file (strings, as written by ``export_onnx``)."""
    import onnx

    proto = onnx.load_model(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def describe(metadata: dict[str, str]) -> str:
    """One line for the user: what was exported."""
    size = "dynamic size" if metadata["noise"] == "input" else f"fixed {metadata['tile']}x{metadata['tile']} input"
    return (f"x{metadata['scale']} one-step graph, {size}, {metadata.get('precision', 'fp32')}, opset "
            f"{metadata['opset']}, seed {metadata['seed']}, tadsr {metadata['tadsr_version']}")
