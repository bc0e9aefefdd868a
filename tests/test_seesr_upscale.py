"""A converted SeeSR / TAD-SeeSR folder through every command that runs models (issue 33): ``tadsr upscale``
(whole and tiled, the variant's sampler, its settings honoured or refused in one line), ``--dry-run``, ``tadsr
evaluate``. The folder is converted from the official-layout parts of ``tests/test_seesr_convert.py`` with the
SD-2-base-like parts of the pipeline fixtures (``tests/data/seesr_pipeline``: a VAE of SD's x8, a CLIP text
encoder as wide as the UNet's cross-attention), so that the whole pipeline runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tadsr.backends import model_info, open_model
from tadsr.cli import main
from tadsr.inference.upscaler import Upscaler
from tadsr.seesr.convert import convert_seesr
from test_seesr_convert import Inputs, inputs  # noqa: F401  (a module fixture: the tiny release's parts)

SD_BASE = Path(__file__).parent / "data" / "seesr_pipeline"  # vae/, text_encoder/, tokenizer/, scheduler/


def _lr(folder: Path, name: str = "a.png", side: int = 24, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((side, side + 4, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / name)
    return folder / name


def _run(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def converted(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A TAD-SeeSR folder: the release's UNet and ControlNet, DAPE, and the pipeline fixtures' SD parts."""
    sd_base = tmp_path_factory.mktemp("sd-base")
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(SD_BASE / part, sd_base / part)
    return convert_seesr(**{**inputs.args(), "sd_base": sd_base},
                         out=tmp_path_factory.mktemp("seesr-out") / "tad-seesr")


@pytest.fixture(scope="module")
def seesr_folder(converted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The same parts as SeeSR itself: its DDPM sampler, 2 steps, guidance 5.5."""
    folder = Path(shutil.copytree(converted, tmp_path_factory.mktemp("seesr") / "seesr"))
    index = json.loads((folder / "tadsr_seesr.json").read_text())
    index.update(variant="seesr", steps=2, guidance=5.5, prompt="clean, high-resolution, 8k")
    (folder / "tadsr_seesr.json").write_text(json.dumps(index))
    return folder


def test_model_info_tells_the_two_variants_apart(converted: Path, seesr_folder: Path) -> None:  # noqa: F811
    one, many = model_info(converted), model_info(seesr_folder)
    assert (one.kind, one.role, one.num_steps, one.scale) == ("seesr", "student", 1, 4)
    assert (many.kind, many.role, many.num_steps, many.scale) == ("seesr", "teacher", 2, 4)


@pytest.mark.slow
def test_tadsr_upscale_runs_a_tad_seesr_folder_whole_and_tiled(converted: Path, tmp_path: Path) -> None:  # noqa: F811
    _lr(tmp_path / "in", "a.png")
    _lr(tmp_path / "in", "b.png", seed=1)
    code, lines = _run("upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(converted),
                       "-t", "0", "-q")
    assert code == 0, lines
    out = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert out.shape == (96, 112, 3) and (tmp_path / "out" / "b.png").is_file()
    code, lines = _run("upscale", "-i", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "tiled"), "--model",
                       str(converted), "-t", "16", "--tile-overlap", "4", "-q")
    assert code == 0, lines
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "a.png"))
    assert tiled.shape == out.shape
    # tiles see less context, so they differ from the whole image, but not by much (seamless blending)
    assert np.abs(tiled.astype(int) - out.astype(int)).mean() < 20


@pytest.mark.slow
def test_the_same_seed_gives_the_same_bits_and_tags_can_be_set(converted: Path) -> None:  # noqa: F811
    lr = (np.random.default_rng(3).random((16, 16, 3)) * 255).astype(np.uint8)
    backend = open_model(converted, device="cpu")
    first = Upscaler(backend, tile=0, seed=5).upscale(lr)
    again = Upscaler(open_model(converted, device="cpu"), tile=0, seed=5).upscale(lr)  # a fresh open, same bits
    other = Upscaler(backend, tile=0, seed=6).upscale(lr)
    tagged = Upscaler(open_model(converted, device="cpu", tags="cat"), tile=0, seed=5).upscale(lr)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert not np.array_equal(first, tagged)  # the prompt reaches the networks


@pytest.mark.slow
def test_a_seesr_folder_samples_with_its_steps_and_guidance(seesr_folder: Path, tmp_path: Path) -> None:
    _lr(tmp_path / "in", side=16)
    code, lines = _run("upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model",
                       str(seesr_folder), "--steps", "2", "--guidance", "3", "--negative-prompt", "blur",
                       "--no-tags", "-t", "0", "-q")
    assert code == 0, lines
    assert np.asarray(Image.open(tmp_path / "out" / "a.png")).shape == (64, 80, 3)


@pytest.mark.parametrize(("which", "args", "needle"), [
    ("tad", ("--guidance", "3"), "TAD-SeeSR runs one step without classifier-free guidance; it does not take "
                                 "guidance (got 3.0)"),
    ("tad", ("--negative-prompt", "blur"), "it does not take negative_prompt (got 'blur')"),
    ("tad", ("--steps", "4"), "runs 1 step"),
    ("tad", ("--noise-level", "30"), "a SeeSR model does not take noise_level (got 30)"),
    ("tad", ("--sampler", "stochastic"), "a SeeSR model does not take sampler (got 'stochastic')"),
    ("tad", ("--tags", "cat", "--no-tags"), "--tags and --no-tags exclude each other"),
    ("seesr", ("--steps", "5000"), "--steps 5000: SeeSR's DDPM scheduler runs 1 to 1000 steps"),
    ("seesr", ("--guidance", "nan"), "guidance nan is not a finite number >= 0"),
])
@pytest.mark.parametrize("dry", [False, True])
def test_a_setting_the_variant_cannot_take_is_one_line(which: str, args: tuple[str, ...], needle: str, dry: bool,
                                                       converted: Path, seesr_folder: Path,  # noqa: F811
                                                       tmp_path: Path) -> None:
    _lr(tmp_path / "in")
    model = converted if which == "tad" else seesr_folder
    code, lines = _run("upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(model),
                       "-q", *args, *(["--dry-run"] if dry else []))
    assert code == 1 and len(lines) == 1 and lines[0].startswith("tadsr: error: ") and needle in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tadsr_evaluate_measures_a_tad_seesr_folder(converted: Path, tmp_path: Path) -> None:  # noqa: F811
    lr = _lr(tmp_path / "lq", side=16)
    Image.open(lr).resize((80, 64), Image.BICUBIC).save(_lr(tmp_path / "gt", side=16))
    code, lines = _run("evaluate", "--lr", str(tmp_path / "lq"), "--gt", str(tmp_path / "gt"), "--models",
                       f"bicubic,{converted}", "-o", str(tmp_path / "report"), "-q")
    assert code == 0, lines
    report = (tmp_path / "report" / "report.md").read_text()
    assert "tad-seesr" in report and "bicubic" in report


def test_the_page_lists_and_runs_a_seesr_folder(converted: Path, tmp_path: Path) -> None:  # noqa: F811
    import torch

    from tadsr.web.jobs import ModelCache, model_catalogue

    shutil.copytree(converted, tmp_path / "models" / "mine")
    catalogue = model_catalogue([converted], tmp_path / "models")
    assert {(e.label, e.kind, e.role) for e in catalogue.values() if e.kind == "seesr"} == {
        ("tad-seesr", "seesr", "student"), ("mine", "seesr", "student")}
    up = ModelCache(catalogue, torch.device("cpu")).upscaler("tad-seesr", tile=0)
    assert up.upscale((np.random.default_rng(0).random((16, 12, 3)) * 255).astype(np.uint8)).shape == (64, 48, 3)


def test_bench_times_tad_seesr_and_refuses_what_it_cannot_honour(converted: Path,  # noqa: F811
                                                                 seesr_folder: Path) -> None:
    code, lines = _run("bench", "--models", str(converted), "--sizes", "16", "--repeats", "1", "--dtypes", "bf16",
                       "--device", "cpu")
    assert code == 1 and lines[-1] == (f"tadsr: error: --models {converted}: a SeeSR model is timed whole, in "
                                       "float32 (an ONNX file: its own precision); it does not take --dtypes bf16 "
                                       "(bench it in a run of its own)")
    code, lines = _run("bench", "--models", str(seesr_folder), "--sizes", "16", "--repeats", "1", "--device", "cpu")
    assert code == 1 and "a multi-step pipeline" in lines[-1]
