"""Hostile networks on every backend (issue 32): an ONNX file whose graph or metadata is not what `tadsr export`
writes, a graph that fails, returns its input or NaN on some image, and any backend whose output has the wrong shape
or non-finite values. Each is one line naming the file (the model at open, the image at run), the rest of the batch
goes on, and nothing half-written is left.

The graphs are built here by hand with onnx's helper API (a few nodes each): no `tadsr export`, which takes
seconds to minutes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import Tensor

from conftest import TINY_SCHEDULE, TINY_UNET, CliExport
from tadsr.cli import main
from tadsr.config import ModelConfig, config_to_json
from tadsr.errors import BackendError, ConfigError, OutputError
from tadsr.inference.batch import Job, run_jobs
from tadsr.inference.tiling import tiled_super_resolve
from tadsr.inference.upscaler import Upscaler
from tadsr.limits import MAX_TILE
from tadsr.nets.autoencoder import PixelUnshuffleConfig
from tadsr.nets.unet import UNetConfig

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from tadsr.inference.onnx import OnnxModel  # noqa: E402

# The tiny x4 student's geometry: LR multiples of 32, 48 noise channels at the LR size (pixel-unshuffle, f = 1).
CONFIG = ModelConfig(unet=UNetConfig(**{**TINY_UNET.__dict__, "in_channels": 48, "out_channels": 48}),
                     first_stage=PixelUnshuffleConfig(factor=4), schedule=TINY_SCHEDULE, scale=4, role="student")
S, M, C = CONFIG.scale, CONFIG.lr_multiple, CONFIG.unet.in_channels
FLOAT = TensorProto.FLOAT


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _metadata(noise: str = "input", tile: int = 0, seed: int = 0) -> dict[str, str]:
    """What `tadsr export` writes."""
    return {"producer": "tadsr", "tadsr_version": "0.1.0", "scale": str(S), "size_multiple": str(M), "noise": noise,
            "noise_channels": str(C), "noise_factor": "1", "seed": str(seed), "tile": str(tile), "role": "student",
            "model_config": config_to_json(CONFIG), "opset": "18", "precision": "fp32"}


def _value(name: str, shape: list, elem: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _graph(path: Path, nodes: list, inputs: list, outputs: list, meta: dict[str, str],
           initializers: list | None = None) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(path))
    return path


def _scales() -> onnx.TensorProto:
    return helper.make_tensor("scales", FLOAT, [4], [1.0, 1.0, float(S), float(S)])


def _upscale_nodes(lr: str = "lr", out: str = "hr", noise: bool = True) -> tuple[list, list]:
    """x S nearest of ``lr`` (+ 0 x the noise's mean, so that the noise input is used): (nodes, initializers)."""
    nodes = [helper.make_node("Resize", [lr, "", "scales"], ["up" if noise else out], mode="nearest")]
    inits = [_scales()]
    if noise:
        nodes += [helper.make_node("ReduceMean", ["noise"], ["mean"], keepdims=1),
                  helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
                  helper.make_node("Add", ["up", "nothing"], [out])]
        inits.append(helper.make_tensor("zero", FLOAT, [], [0.0]))
    return nodes, inits


LR, NOISE, HR = _value("lr", [1, 3, "H", "W"]), _value("noise", [1, C, "H", "W"]), _value("hr", [1, 3, "Y", "X"])


def dynamic_graph(path: Path, meta: dict[str, str] | None = None) -> Path:
    """A graph as `tadsr export` writes it (dynamic size, the noise an input), running nearest x4."""
    nodes, inits = _upscale_nodes()
    return _graph(path, nodes, [LR, NOISE], [HR], _metadata() if meta is None else meta, inits)


def fixed_graph(path: Path, tile: int = M, seed: int = 0, meta: dict[str, str] | None = None) -> Path:
    """A graph as `tadsr export --tile` writes it (one tile x tile input, the noise inside), nearest x4."""
    nodes, inits = _upscale_nodes(noise=False)
    return _graph(path, nodes, [_value("lr", [1, 3, tile, tile])], [_value("hr", [1, 3, tile * S, tile * S])],
                  _metadata("embedded", tile, seed) if meta is None else meta, inits)


# -- graphs refused when the file is opened: (builder, the message's words) -------------------------------------

def _no_hr(path: Path) -> Path:
    nodes, inits = _upscale_nodes(out="out")
    return _graph(path, nodes, [LR, NOISE], [_value("out", [1, 3, "Y", "X"])], _metadata(), inits)


def _no_lr(path: Path) -> Path:
    nodes, inits = _upscale_nodes(lr="x")
    return _graph(path, nodes, [_value("x", [1, 3, "H", "W"]), NOISE], [HR], _metadata(), inits)


def _extra_input(path: Path) -> Path:
    nodes, inits = _upscale_nodes(out="hr0")
    nodes.append(helper.make_node("Add", ["hr0", "mask"], ["hr"]))
    return _graph(path, nodes, [LR, NOISE, _value("mask", [1])], [HR], _metadata(), inits)


def _double_input(path: Path) -> Path:
    nodes, inits = _upscale_nodes(lr="lr64", out="hr")
    nodes.insert(0, helper.make_node("Cast", ["lr"], ["lr64"], to=FLOAT))
    return _graph(path, nodes, [_value("lr", [1, 3, "H", "W"], TensorProto.DOUBLE), NOISE], [HR], _metadata(), inits)


def _int_output(path: Path) -> Path:
    nodes, inits = _upscale_nodes(out="up_f")
    nodes.append(helper.make_node("Cast", ["up_f"], ["hr"], to=TensorProto.INT64))
    return _graph(path, nodes, [LR, NOISE], [_value("hr", [1, 3, "Y", "X"], TensorProto.INT64)], _metadata(), inits)


def _rank3_input(path: Path) -> Path:
    nodes, inits = _upscale_nodes(lr="lr4")
    nodes.insert(0, helper.make_node("Unsqueeze", ["lr", "axis0"], ["lr4"]))
    inits.append(helper.make_tensor("axis0", TensorProto.INT64, [1], [0]))
    return _graph(path, nodes, [_value("lr", [3, "H", "W"]), NOISE], [HR], _metadata(), inits)


def _dynamic_with_fixed_lr(path: Path) -> Path:
    nodes, inits = _upscale_nodes()
    return _graph(path, nodes, [_value("lr", [1, 3, 64, 64]), NOISE], [HR], _metadata(), inits)


def _embedded_with_noise_input(path: Path) -> Path:
    nodes, inits = _upscale_nodes()
    return _graph(path, nodes, [_value("lr", [1, 3, M, M]), _value("noise", [1, C, M, M])],
                  [_value("hr", [1, 3, M * S, M * S])], _metadata("embedded", M), inits)


def _input_without_noise(path: Path) -> Path:
    nodes, inits = _upscale_nodes(noise=False)
    return _graph(path, nodes, [LR], [HR], _metadata(), inits)


def _fixed_wrong_size(path: Path) -> Path:  # the graph's 32x32 where its metadata says 64
    nodes, inits = _upscale_nodes(noise=False)
    return _graph(path, nodes, [_value("lr", [1, 3, M, M])], [_value("hr", [1, 3, M * S, M * S])],
                  _metadata("embedded", 2 * M), inits)


def _with_metadata(**changes: str | None) -> Callable[[Path], Path]:
    """The good graph of the kind ``noise`` says, its metadata changed (a value None: the key left out)."""
    def build(path: Path) -> Path:
        noise = changes.get("noise", "input")
        meta = {k: v for k, v in {**_metadata(), **changes}.items() if v is not None}
        return dynamic_graph(path, meta) if noise != "embedded" else fixed_graph(path, meta=meta)
    return build


REFUSED_AT_OPEN = {
    "no hr output": (_no_hr, "the graph has no output 'hr' (it has 'out')"),
    "no lr input": (_no_lr, "the graph has no input 'lr'"),
    "an extra required input": (_extra_input, "the graph needs an input 'mask' that tadsr does not feed"),
    "a float64 input": (_double_input, "its input 'lr' is tensor(double)"),
    "an int64 output": (_int_output, "its output 'hr' is tensor(int64)"),
    "a rank-3 input": (_rank3_input, "its input 'lr' has shape [3, 'H', 'W']"),
    "a dynamic file of one size": (_dynamic_with_fixed_lr, "its input 'lr' has shape (1, 3, 64, 64)"),
    "a fixed file with a noise input": (_embedded_with_noise_input, "needs an input 'noise' that tadsr does not feed"),
    "a dynamic file without its noise input": (_input_without_noise, "the graph has no input 'noise'"),
    "a fixed graph of another size": (_fixed_wrong_size, "its input 'lr' has shape (1, 3, 32, 32)"),
    "tile 100000": (_with_metadata(noise="embedded", tile="100000"),
                    "metadata tile: 100000 is not a tile size (0, the whole image, to 4096 LR pixels)"),
    "tile -32": (_with_metadata(noise="embedded", tile="-32"), "metadata tile: -32 is not a tile size"),
    "tile not a number": (_with_metadata(tile="1e5"), "metadata tile: '1e5' is not an integer"),
    "tile missing": (_with_metadata(tile=None), "metadata tile: missing"),
    "tile not a multiple": (_with_metadata(noise="embedded", tile="48"),
                            "metadata tile: 48 is not a positive multiple of the model's size multiple 32"),
    "embedded tile 0": (_with_metadata(noise="embedded", tile="0"), "metadata tile: 0 is not a positive multiple"),
    "a dynamic file with a tile": (_with_metadata(tile="64"), "metadata tile: 64, but a file with the noise an input"),
    "noise unknown": (_with_metadata(noise="both"), "metadata noise: 'both' is not one of input, embedded"),
    "seed negative": (_with_metadata(seed="-1"), "metadata seed: -1 is not a seed"),
    "seed 2^64": (_with_metadata(seed=str(2**64)), f"metadata seed: {2**64} is not a seed"),
    "scale": (_with_metadata(scale="2"), "metadata scale: 2, but its model config says 4"),
    "size multiple": (_with_metadata(size_multiple="16"), "metadata size_multiple: 16, but its model config says 32"),
    "noise channels": (_with_metadata(noise_channels="3"), "metadata noise_channels: 3, but its model config says 48"),
    "model config damaged": (_with_metadata(model_config="{not json"), "its tadsr metadata is damaged"),
    "model config of another kind": (_with_metadata(model_config=json.dumps({"scale": "four"})),
                                     "its tadsr metadata is damaged"),
}


def _inputs(folder: Path) -> Path:
    """a.png (60x60: padded to 64, with a black pixel) and b.png (30x30: padded to 32, no black pixel)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    a = rng.integers(1, 255, (60, 60, 3), dtype=np.uint8)
    a[5, 7] = 0
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(rng.integers(1, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "b.png")
    return folder


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return _inputs(tmp_path / "in")


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("case", list(REFUSED_AT_OPEN))
def test_a_graph_or_metadata_that_tadsr_export_does_not_write_is_one_line_at_open(case: str, tmp_path: Path,
                                                                                  images: Path) -> None:
    build, words = REFUSED_AT_OPEN[case]
    path = build(tmp_path / "model.onnx")
    with pytest.raises(ConfigError) as err:
        OnnxModel(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value) and "\n" not in str(err.value)
    code, stdout, stderr = _run("upscale", "-i", str(images), "-o", str(tmp_path / "out"), "--model", str(path), "-q")
    assert code == 1 and stderr.splitlines() == [f"tadsr: error: {err.value}"], stderr
    assert _files(tmp_path / "out") == []


def _identity(path: Path) -> Path:  # returns its input: a (1, 3, h, w) "output" of an h x w input
    nodes = [helper.make_node("Identity", ["lr"], ["hr0"]), helper.make_node("ReduceMean", ["noise"], ["mean"]),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
             helper.make_node("Add", ["hr0", "nothing"], ["hr"])]
    return _graph(path, nodes, [LR, NOISE], [HR], _metadata(), [helper.make_tensor("zero", FLOAT, [], [0.0])])


def _nan_on_black(path: Path) -> Path:  # x4, plus 0 x log(lr): NaN where an input pixel is black (log 0 = -inf)
    nodes, inits = _upscale_nodes(out="hr0")
    nodes += [helper.make_node("Log", ["lr"], ["log"]), helper.make_node("Mul", ["log", "zero"], ["nan0"]),
              helper.make_node("Resize", ["nan0", "", "scales"], ["nan"], mode="nearest"),
              helper.make_node("Add", ["hr0", "nan"], ["hr"])]
    return _graph(path, nodes, [LR, NOISE], [HR], _metadata(), inits)


def _fails_at_64(path: Path) -> Path:  # ONNX Runtime's own error for any input but 32x32: a Reshape to 128x128
    nodes, inits = _upscale_nodes(out="hr0")  # (the shape computed at run time, so that none is inferred)
    nodes += [helper.make_node("ReduceMean", ["noise"], ["mean0"], keepdims=0),
              helper.make_node("Mul", ["mean0", "zero"], ["nothing0"]),
              helper.make_node("Add", ["nothing0", "shape_f"], ["shape_sum"]),
              helper.make_node("Cast", ["shape_sum"], ["shape"], to=TensorProto.INT64),
              helper.make_node("Reshape", ["hr0", "shape"], ["hr"])]
    inits.append(helper.make_tensor("shape_f", FLOAT, [4], [1, 3, M * S, M * S]))
    return _graph(path, nodes, [LR, NOISE], [HR], _metadata(), inits)


def _fixed_nan(path: Path) -> Path:  # a fixed-size file: NaN where a pixel of its tile is black
    nodes, inits = _upscale_nodes(noise=False, out="hr0")
    nodes += [helper.make_node("Log", ["lr"], ["log"]), helper.make_node("Mul", ["log", "zero"], ["nan0"]),
              helper.make_node("Resize", ["nan0", "", "scales"], ["nan"], mode="nearest"),
              helper.make_node("Add", ["hr0", "nan"], ["hr"])]
    inits.append(helper.make_tensor("zero", FLOAT, [], [0.0]))
    return _graph(path, nodes, [_value("lr", [1, 3, M, M])], [_value("hr", [1, 3, M * S, M * S])],
                  _metadata("embedded", M), inits)


FAILS_AT_RUN = {  # builder, {image: the words of its line} (the images not named are written)
    "returns its input": (_identity, {
        "a.png": "model returned (1, 3, 64, 64) for a (1, 3, 64, 64) tile; expected (1, 3, 256, 256)",
        "b.png": "model returned (1, 3, 32, 32) for a (1, 3, 32, 32) tile; expected (1, 3, 128, 128)"}),
    "NaN on a black pixel": (_nan_on_black, {"a.png": "model returned non-finite values (NaN/inf)"}),
    "ONNX Runtime fails on one size": (_fails_at_64, {"a.png": "ONNX Runtime failed running "}),
    "a fixed-size file, NaN on a black pixel": (_fixed_nan, {"a.png": "model returned non-finite values (NaN/inf)"}),
}


@pytest.mark.parametrize("case", list(FAILS_AT_RUN))
def test_a_graph_that_fails_or_returns_garbage_fails_its_image_and_the_batch_goes_on(case: str, tmp_path: Path,
                                                                                     images: Path) -> None:
    build, failing = FAILS_AT_RUN[case]
    path = build(tmp_path / "model.onnx")
    out = tmp_path / "out"
    code, stdout, stderr = _run("upscale", "-i", str(images), "-o", str(out), "--model", str(path), "-q")
    errors = [line for line in stderr.splitlines() if line.startswith("tadsr: error:")]
    assert code == 1 and len(errors) == len(failing), stderr
    for line, (name, words) in zip(errors, sorted(failing.items()), strict=True):
        assert line.startswith(f"tadsr: error: {images / name}: ") and words in line, line
    written = sorted({"a.png", "b.png"} - set(failing))
    assert _files(out) == written  # the others written, nothing half-written or temporary left
    assert f"{len(written)} done, 0 skipped, {len(failing)} failed" in stdout
    if "ONNX Runtime" in case:
        assert str(path) in errors[0] and "Traceback" not in stderr


def test_a_good_hand_built_graph_runs_whole_and_fixed(tmp_path: Path, images: Path) -> None:
    """The checks refuse nothing `tadsr export` writes: the two kinds of graph, as the file says, run x4."""
    for name, build in (("dynamic.onnx", dynamic_graph), ("fixed.onnx", fixed_graph)):
        code, stdout, stderr = _run("upscale", "-i", str(images), "-o", str(tmp_path / name[:-5]), "--model",
                                    str(build(tmp_path / name)), "-q", "--tile", "32", "--tile-overlap", "8")
        assert code == 0 and "2 done" in stdout and stderr == "", stderr
        with Image.open(tmp_path / name[:-5] / "a.png") as img:
            assert img.size == (240, 240)


# -- any backend: what run returns is checked where the tiler calls it --------------------------------------------

class FakeBackend:
    """A x2 backend of multiple 8 whose ``run`` returns ``kind``: "good" (nearest x2), "same" (its input),
    "nan", "inf", "numpy", "int", "channels" (4 channels); ``fixed``: a fixed-size one (its own seed 5)."""

    scale, size_multiple, noise_factor, device = 2, 8, 1, torch.device("cpu")

    def __init__(self, kind: str, fixed: int = 0) -> None:
        self.kind = kind
        if fixed:
            self.fixed_tile, self.fixed_seed = fixed, 5
        self.calls = 0

    def draw_noise(self, height: int, width: int, seed: int) -> Tensor:
        return torch.zeros(1, 1, 1, height, width)

    def run(self, lr: Tensor, noise: Tensor) -> Tensor:
        self.calls += 1
        out = torch.nn.functional.interpolate(lr, scale_factor=2, mode="nearest")
        if self.kind == "same":
            return lr
        if self.kind in ("nan", "inf"):
            out[..., 3, 3] = float(self.kind)
        if self.kind == "numpy":
            return out.numpy()
        if self.kind == "int":
            return out.long()
        if self.kind == "channels":
            return torch.cat([out, out[:, :1]], dim=1)
        return out


BAD_OUTPUTS = {  # for an (h, w) tile
    "same": "model returned (1, 3, {h}, {w}) for a (1, 3, {h}, {w}) tile; expected (1, 3, {H}, {W})",
    "nan": "model returned non-finite values (NaN/inf)", "inf": "model returned non-finite values (NaN/inf)",
    "numpy": "model returned an object of type ndarray for a (1, 3, {h}, {w}) tile; expected a tensor (1, 3, {H}, {W})",
    "int": "model returned torch.int64 values; expected floating point",
    "channels": "model returned (1, 4, {H}, {W}) for a (1, 3, {h}, {w}) tile; expected (1, 3, {H}, {W})"}
PATHS = {"whole image": {"tile": 0}, "tiled": {"tile": 16, "tile_overlap": 4}, "fixed tile": {}}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", list(BAD_OUTPUTS))
def test_a_backend_output_of_the_wrong_shape_or_not_finite_is_a_backend_error_on_every_path(kind: str,
                                                                                              path: str) -> None:
    backend = FakeBackend(kind, fixed=16 if path == "fixed tile" else 0)
    lr = torch.rand(1, 3, 16 if path == "whole image" else 40, 40) * 2 - 1
    with pytest.raises(BackendError) as err:
        Upscaler(backend, **PATHS[path]).upscale_tensor(lr)
    h, w = (16, 40) if path == "whole image" else (16, 16)
    assert str(err.value) == BAD_OUTPUTS[kind].format(h=h, w=w, H=2 * h, W=2 * w)
    assert backend.calls == 1  # the first run: nothing more is computed
    assert isinstance(err.value, RuntimeError)  # what callers catch for a runtime's failure


def test_a_good_backend_passes_on_every_path() -> None:
    lr = torch.rand(1, 3, 40, 40) * 2 - 1
    for path, settings in PATHS.items():
        out = Upscaler(FakeBackend("good", fixed=16 if path == "fixed tile" else 0), **settings).upscale_tensor(lr)
        assert out.shape == (1, 3, 80, 80) and torch.isfinite(out).all()
    out = tiled_super_resolve(FakeBackend("good"), lr, tile=16, overlap=4, batch_size=3)
    assert out.shape == (1, 3, 80, 80)


@pytest.mark.parametrize("fixed", [0, 16])
def test_run_jobs_names_the_image_a_backend_fails_on_and_goes_on(tmp_path: Path, fixed: int) -> None:
    """A backend that returns NaN for an image with a black pixel: that image is one line naming it; the other is
    written; nothing else is left in the output folder."""
    class NanOnBlack(FakeBackend):
        def run(self, lr: Tensor, noise: Tensor) -> Tensor:
            out = super().run(lr, noise)
            return out if bool((lr > -1).all()) else out * float("nan")

    folder = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    jobs = [Job(folder / name, out / name) for name in ("a.png", "b.png")]
    lines: list[str] = []
    summary = run_jobs(Upscaler(NanOnBlack("good", fixed=fixed)), jobs, show_progress=False, report=lines.append)
    assert (summary.done, summary.failed) == (1, 1)
    assert lines == [f"{folder / 'a.png'}: model returned non-finite values (NaN/inf)"]
    assert _files(out) == ["b.png"]


# -- settings a fixed-size file cannot honour: refused or said, in Upscaler ----------------------------------------

def test_a_seed_other_than_a_fixed_files_own_is_refused(tmp_path: Path, images: Path) -> None:
    path = fixed_graph(tmp_path / "fixed.onnx", seed=7)
    backend = OnnxModel(path)
    assert Upscaler(backend).options.seed == 7 and Upscaler(backend, seed=7).options.seed == 7
    with pytest.raises(ConfigError) as err:
        Upscaler(backend, seed=5)
    assert str(err.value) == (f"{path}: seed 5 cannot apply: a fixed-size file runs the noise of seed 7, embedded "
                              "when it was exported (leave the seed out or give 7, or export it again with --seed 5)")
    code, _, stderr = _run("upscale", "-i", str(images), "-o", str(tmp_path / "out"), "--model", str(path), "--seed",
                           "5", "-q")
    assert code == 1 and stderr.splitlines() == [f"tadsr: error: {err.value}"]
    assert not (tmp_path / "out").exists()


def test_a_tile_or_overlap_a_fixed_file_cannot_run_is_said() -> None:
    said: list[str] = []
    up = Upscaler(FakeBackend("good", fixed=32), tile=128, tile_overlap=16, report=said.append)
    assert up.tile_size() == 32 and up.options.tile_overlap == 8
    assert said == ["FakeBackend: tile 128 runs as 32: a fixed-size file runs 32x32 tiles only",
                    "FakeBackend: tile overlap 16 runs as 8, a quarter of its 32x32 tile"]
    said.clear()
    up = Upscaler(FakeBackend("good", fixed=32), tile=32, tile_overlap=4, report=said.append)
    assert said == [] and up.options.tile_overlap == 4  # what it can run: as asked, without a word
    up = Upscaler(FakeBackend("good", fixed=32), report=said.append)
    assert said == [] and up.options.tile_overlap == 8  # not asked: the default, at most a quarter of the tile
    with pytest.warns(UserWarning, match="tile 0 runs as 32"):
        Upscaler(FakeBackend("good", fixed=32), tile=0)


@pytest.mark.parametrize("tile", [MAX_TILE + 1, 100000])
def test_a_tile_over_the_limit_is_refused(tile: int) -> None:
    with pytest.raises(ConfigError, match=f"--tile: {tile} is not a tile size"):
        Upscaler(FakeBackend("good"), tile=tile)


# -- tadsr export ------------------------------------------------------------------------------------------------

@pytest.fixture
def no_exporter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torch.onnx.export replaced by a failure that records it was reached."""
    reached: list[str] = []

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        reached.append("export")
        raise RuntimeError("the exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)
    return reached


def test_export_refuses_to_replace_a_file_without_overwrite(tiny_student_file: Path, tmp_path: Path,
                                                            no_exporter: list[str]) -> None:
    target = tmp_path / "x.onnx"
    target.write_bytes(b"mine")
    code, _, stderr = _run("export", str(tiny_student_file), "-o", str(target))
    assert code == 1 and stderr.splitlines() == [f"tadsr: error: {target}: exists; pass --overwrite to replace it"]
    assert no_exporter == [] and target.read_bytes() == b"mine"
    code, _, stderr = _run("export", str(tiny_student_file), "-o", str(target), "--overwrite")
    assert code == 1 and "the ONNX exporter failed" in stderr and no_exporter == ["export"]
    assert target.read_bytes() == b"mine" and _files(tmp_path) == ["x.onnx"]  # a failed export replaces nothing


@pytest.mark.parametrize(("tile", "words"), [
    (100000, "--tile: 100000 is not a tile size (0, the whole image, to 4096 LR pixels)"),
    (MAX_TILE + 1, f"--tile: {MAX_TILE + 1} is not a tile size"),
    (4000, "--tile: 4000 would embed 2,930 MiB of noise beside"),  # 48 x 4000 x 4000 float32, over 2 GiB
])
def test_export_bounds_the_tile_and_the_file_before_anything_is_built(tiny_student_file: Path, tmp_path: Path,
                                                                       no_exporter: list[str], tile: int,
                                                                       words: str) -> None:
    code, _, stderr = _run("export", str(tiny_student_file), "-o", str(tmp_path / "x.onnx"), "--tile", str(tile))
    assert code == 1 and len(stderr.splitlines()) == 1 and words in stderr, stderr
    assert no_exporter == [] and _files(tmp_path) == []


def test_export_to_a_folder_is_one_line(tiny_student_file: Path, tmp_path: Path, no_exporter: list[str]) -> None:
    from tadsr.export import check_target

    (tmp_path / "x.onnx").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        check_target(tmp_path / "x.onnx", overwrite=True)


def test_an_export_whose_write_fails_leaves_no_file(tiny_student_file: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter succeeds, the save fails half-way: no file, no temporary."""
    class Program:
        model_proto = helper.make_model(helper.make_graph([], "g", [], []))

    def half_save(proto, path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())
    monkeypatch.setattr(onnx, "save_model", half_save)
    code, _, stderr = _run("export", str(tiny_student_file), "-o", str(tmp_path / "x.onnx"), "--tile", "32")
    assert code == 1 and stderr.splitlines() == [f"tadsr: error: {tmp_path / 'x.onnx'}: could not be written (No "
                                                 "space left on device)"]
    assert _files(tmp_path) == []


@pytest.mark.slow
def test_an_export_says_nothing_but_what_it_wrote(fixed_onnx_export: CliExport) -> None:
    """torch.export's and torch.onnx's own notices (torchvision ops skipped, deprecations inside PyTorch, axis
    names) are not the user's business; the file opens and runs (conftest: `tadsr export TINY --tile 32 --seed 3`,
    one export for the session, about 25 s, with what reached descriptor 2 captured as capfd would)."""
    path, code, stdout, stderr = (fixed_onnx_export.path, fixed_onnx_export.code, fixed_onnx_export.stdout,
                                  fixed_onnx_export.stderr)
    past_click = fixed_onnx_export.fd_stderr  # what went past click's streams (a logging handler's own stream)
    assert code == 0 and stderr == "" and past_click == "", stderr + past_click
    assert stdout.startswith(f"wrote {path}: x4 one-step graph, fixed 32x32 input")
    assert OnnxModel(path).fixed_tile == 32 and OnnxModel(path).fixed_seed == 3


def test_the_page_shows_a_graph_returning_garbage_as_one_line(tmp_path: Path, images: Path) -> None:
    """`tadsr serve`'s job (``web.jobs.upscale_file``) gets the tiler's check: one line naming the upload."""
    from tadsr.data.image_io import ImageError
    from tadsr.web.jobs import JobSettings, ModelCache, model_catalogue, upscale_file

    path = _identity(tmp_path / "identity.onnx")
    models = ModelCache(model_catalogue([path]), torch.device("cpu"))
    with pytest.raises(ImageError) as err:
        upscale_file(images / "b.png", "upload.png", JobSettings(model="identity.onnx"), models, tmp_path / "job")
    assert str(err.value) == ("upload.png: BackendError: model returned (1, 3, 32, 32) for a (1, 3, 32, 32) tile; "
                              "expected (1, 3, 128, 128)")
    assert _files(tmp_path / "job") == []
