"""The diffusers backend: a tiny random StableDiffusionUpscalePipeline, saved with save_pretrained as diffusers'
own tests do, loaded by tadsr and run by its sampler; the parity with diffusers' pipeline proves the backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")  # the test extra installs it: this runs in CI
transformers = pytest.importorskip("transformers")

from tadsr.errors import ConfigError  # noqa: E402
from tadsr.sd.diffusers_teacher import DiffusersUpscaleTeacher, read_index  # noqa: E402


def _lr() -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 20), indexing="ij")
    return torch.stack([x, y, (x * y) ** 0.5])[None]  # (1, 3, 16, 20) in [0, 1]


@pytest.mark.parametrize("prompt", ["", "a sharp photo"])
def test_the_sampler_equals_diffusers_own_pipeline(pipeline_dir: Path, prompt: str) -> None:
    """Same weights, generator, scheduler and steps: tadsr's sampler and decoder give the pipeline's image."""
    pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(pipeline_dir, local_files_only=True)
    theirs = pipe(prompt=prompt, image=_lr(), num_inference_steps=4, guidance_scale=0.0, noise_level=20,
                  generator=torch.Generator().manual_seed(3), output_type="pt").images
    teacher = DiffusersUpscaleTeacher.from_folder(pipeline_dir, prompt=prompt)
    ours = (teacher.upscale(_lr() * 2 - 1, steps=4, seed=3) + 1) / 2
    assert ours.shape == theirs.shape == (1, 3, 64, 80) and teacher.scale == 4
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    other = (teacher.upscale(_lr() * 2 - 1, steps=4, seed=4) + 1) / 2
    assert (other - theirs).abs().max() > 1e-3  # the seed matters: the comparison above is not vacuous


def _copy(pipeline_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pipeline_dir, tmp_path / "copy"))


@pytest.mark.parametrize(("damage", "message"), [
    ("no-index", "not a diffusers pipeline folder (no model_index.json)"),
    ("other-pipeline", "a StableDiffusionPipeline; tadsr's diffusers backend runs StableDiffusionUpscalePipeline"),
    ("no-unet", "component 'unet' missing (no unet/ folder)"),
    ("pickled", "no .safetensors weights (tadsr reads no pickled weights)"),
    ("scheduler", "scheduler is a LMSDiscreteScheduler; supported"),
    ("bad-json", "not a diffusers model index"),
    ("text-class", "text_encoder is a AutoModel; supported: CLIPTextModel"),
])
def test_a_folder_the_backend_cannot_run_is_one_line(pipeline_dir: Path, tmp_path: Path, damage: str,
                                                    message: str) -> None:
    folder = _copy(pipeline_dir, tmp_path)
    index = folder / "model_index.json"
    data = json.loads(index.read_text())
    if damage == "no-index":
        index.unlink()
    elif damage == "other-pipeline":
        index.write_text(json.dumps({**data, "_class_name": "StableDiffusionPipeline"}))
    elif damage == "no-unet":
        shutil.rmtree(folder / "unet")
    elif damage == "pickled":
        for f in (folder / "vae").glob("*.safetensors"):
            f.rename(f.with_suffix(".bin"))
    elif damage == "scheduler":
        index.write_text(json.dumps({**data, "scheduler": ["diffusers", "LMSDiscreteScheduler"]}))
    elif damage == "bad-json":
        index.write_text("{not json")
    elif damage == "text-class":  # only the CLIP classes are built from the folder's names
        index.write_text(json.dumps({**data, "text_encoder": ["transformers", "AutoModel"]}))
    with pytest.raises(ConfigError) as err:
        DiffusersUpscaleTeacher.from_folder(folder) if damage == "text-class" else read_index(folder)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(folder) in str(err.value)


def test_an_unsupported_prediction_type_is_one_line(pipeline_dir: Path, tmp_path: Path) -> None:
    folder = _copy(pipeline_dir, tmp_path)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "sample"}))
    with pytest.raises(ConfigError, match="prediction type 'sample'"):
        DiffusersUpscaleTeacher.from_folder(folder)


def test_tadsr_upscale_runs_a_diffusers_folder(pipeline_dir: Path, tmp_path: Path) -> None:
    """`tadsr upscale --model DIR --steps N`: the teacher's image through the CLI's file handling (an odd LR size
    padded to the UNet's multiple and cropped back), the same pixels as the library gives."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from tadsr.cli import main
    from tadsr.inference.upscaler import Upscaler
    from tadsr.sd.diffusers_teacher import DiffusersBackend

    rgb = (np.asarray(_lr()[0].permute(1, 2, 0)) * 255).round().astype(np.uint8)[:15, :18]
    Image.fromarray(rgb).save(tmp_path / "lr.png")
    result = CliRunner().invoke(main, ["upscale", "-i", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"),
                                       "--model", str(pipeline_dir), "--steps", "3", "--seed", "5", "--tile", "0",
                                       "-q"])
    assert result.exit_code == 0, result.stderr
    out = np.asarray(Image.open(tmp_path / "out" / "lr.png"))
    assert out.shape == (60, 72, 3)
    upscaler = Upscaler(DiffusersBackend(DiffusersUpscaleTeacher.from_folder(pipeline_dir), steps=3), tile=0, seed=5)
    assert np.array_equal(out, upscaler.upscale(rgb))


def test_a_bad_folder_or_a_missing_extra_is_one_line_and_writes_nothing(pipeline_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from click.testing import CliRunner
    from PIL import Image

    from tadsr.cli import main
    from tadsr.errors import MissingExtraError
    from tadsr.sd.diffusers_teacher import import_diffusers

    Image.new("RGB", (16, 16)).save(tmp_path / "lr.png")
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["upscale", "-i", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"),
                                       "--model", str(tmp_path / "empty"), "-q"])
    assert result.exit_code == 1 and not (tmp_path / "out").exists()
    lines = result.stderr.strip().splitlines()
    assert lines == [f"tadsr: error: {tmp_path / 'empty'}: not a model folder (no model_index.json, as a diffusers "
                     "pipeline has, nor tadsr_seesr.json, as `tadsr convert seesr` writes)"]
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if tadsr[sd] were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'tadsr\[sd\]'"):
        import_diffusers()


def test_a_diffusers_teacher_runs_tiled_from_one_noise_draw(pipeline_dir: Path) -> None:
    """--tile: each tile samples from its slice of one (latent + LR) noise draw per image; the same seed gives the
    same bits, another seed another picture, and the tiles cover the image."""
    from tadsr.inference.upscaler import Upscaler
    from tadsr.sd.diffusers_teacher import DiffusersBackend

    teacher = DiffusersUpscaleTeacher.from_folder(pipeline_dir)
    lr = _lr() * 2 - 1  # (1, 3, 16, 20)
    seen = []
    up = Upscaler(DiffusersBackend(teacher, steps=2), seed=1, tile=8, tile_overlap=2)
    first = up.upscale_tensor(lr, progress=lambda done, total: seen.append((done, total)))
    assert first.shape == (1, 3, 64, 80) and torch.isfinite(first).all()
    assert seen[-1] == (9, 9)  # 3 x 3 tiles of 8 with overlap 2 over 16 x 20
    assert torch.equal(first, Upscaler(DiffusersBackend(teacher, steps=2), seed=1, tile=8, tile_overlap=2)
                       .upscale_tensor(lr))
    other = Upscaler(DiffusersBackend(teacher, steps=2), seed=2, tile=8, tile_overlap=2).upscale_tensor(lr)
    assert (other - first).abs().max() > 1e-3

