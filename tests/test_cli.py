"""The tadsr command: info and convert, including their failures (one line, non-zero exit, no partial output)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import randomize
from tadsr.cli import main
from tadsr.config import ModelConfig, config_to_json
from tadsr.model import SRModel, load_model


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_info_on_the_official_preset_prints_the_parameter_counts() -> None:
    code, out, _ = _run("info", "realsr-x4")
    assert code == 0
    assert "unet parameters: 118,593,583" in out and "first-stage parameters: 55,322,782" in out


@pytest.fixture
def official_files(tiny_vq_model_config: ModelConfig, tmp_path: Path) -> tuple[SRModel, Path, Path, Path]:
    """A tiny model and its parts written as official files: a DDP trainer checkpoint and a bare autoencoder dict."""
    model = randomize(SRModel(tiny_vq_model_config), seed=11).eval()
    unet_path, ae_path, cfg_path = tmp_path / "unet.pth", tmp_path / "ae.pth", tmp_path / "model.json"
    torch.save({"state_dict": {"module." + k: v for k, v in model.unet.state_dict().items()}}, unet_path)
    torch.save(model.first_stage.state_dict(), ae_path)
    cfg_path.write_text(config_to_json(tiny_vq_model_config))
    return model, unet_path, ae_path, cfg_path


def test_convert_then_load_gives_the_same_model(official_files, tmp_path: Path) -> None:  # noqa: ANN001
    model, unet_path, ae_path, cfg_path = official_files
    out = tmp_path / "out" / "model.safetensors"
    code, stdout, stderr = _run("convert", "--config", str(cfg_path), "--unet", str(unet_path),
                                "--autoencoder", str(ae_path), "-o", str(out))
    assert code == 0, stderr
    loaded = load_model(out)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    code, stdout, _ = _run("info", str(out))
    assert code == 0 and '"scale": 2' in stdout


def test_convert_of_a_wrong_checkpoint_fails_in_one_line_and_writes_nothing(official_files, tmp_path: Path) -> None:  # noqa: ANN001
    _, unet_path, ae_path, cfg_path = official_files
    out = tmp_path / "model.safetensors"
    code, _, stderr = _run("convert", "--config", str(cfg_path), "--unet", str(ae_path),
                           "--autoencoder", str(ae_path), "-o", str(out))
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(ae_path) in lines[0] and "missing" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".model.safetensors*"))


@pytest.mark.parametrize(("args", "needle"), [
    (("--unet", "nope.pth", "--autoencoder", "x.pth", "-o", "m.safetensors"), "nope.pth: no such checkpoint"),
    (("--unet", "a.pth", "--autoencoder", "x.pth", "-o", "m.pth"), "must end in .safetensors"),
])
def test_convert_argument_errors(args: tuple[str, ...], needle: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, stderr = _run("convert", *args)
    assert code == 1 and needle in stderr and len(stderr.strip().splitlines()) == 1


def test_info_on_a_missing_file_fails_cleanly(tmp_path: Path) -> None:
    code, _, stderr = _run("info", str(tmp_path / "none.safetensors"))
    assert code == 1 and "none.safetensors: no such model file" in stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "tadsr"
    assert script.exists(), "the package is not installed (pip install -e .): no tadsr console script"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "convert" in result.stdout and "info" in result.stdout


def test_info_describes_a_seesr_folder_and_a_diffusers_folder_from_their_headers(seesr_teacher_dir: Path,
                                                                                 pipeline_dir: Path) -> None:
    from safetensors.torch import load_file

    for folder, kind, role in ((seesr_teacher_dir, "seesr", "teacher"), (pipeline_dir, "diffusers", "teacher")):
        code, out, err = _run("info", str(folder))
        assert code == 0, err
        lines = out.splitlines()
        assert lines[:2] == [f"kind: {kind}", f"role: {role}"] and "scale: 4" in lines
        for part in ("unet", "vae"):
            count = sum(v.numel() for file in (folder / part).glob("*.safetensors")
                        for v in load_file(str(file)).values())
            assert f"{part} parameters: {count:,}" in lines, lines
    code, out, _ = _run("info", str(seesr_teacher_dir))
    assert "variant: 'seesr'" in out and "guidance: 5.5" in out
