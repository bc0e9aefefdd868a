"""Official checkpoint forms load strictly and identically; bad files fail naming the file and key; our format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import TINY_UNET, TINY_VQ, randomize
from tadsr.checkpoints import CheckpointError, load_official, read_state_dict
from tadsr.config import ModelConfig
from tadsr.model import SRModel, load_model, save_model
from tadsr.nets.autoencoder import VQAutoencoder
from tadsr.nets.unet import SwinUNet


@pytest.fixture(scope="module")
def source() -> SwinUNet:
    return randomize(SwinUNet(TINY_UNET), seed=7).eval()


def _out(unet: SwinUNet) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x, lq = torch.randn(1, 3, 32, 32, generator=gen), torch.randn(1, 3, 32, 32, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([3]), lq)


FORMS = {
    "bare": lambda sd: sd,
    "trainer": lambda sd: {"iters_start": 300000, "log_step": {}, "state_dict": sd},
    "ddp": lambda sd: {"module." + k: v for k, v in sd.items()},
    "compiled": lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},
    "ddp-compiled-trainer": lambda sd: {"state_dict": {"module._orig_mod." + k: v for k, v in sd.items()}},
}


@pytest.mark.parametrize("form", FORMS)
def test_official_forms_load_strictly_and_give_identical_outputs(source: SwinUNet, form: str, tmp_path: Path) -> None:
    path = tmp_path / f"{form}.pth"
    torch.save(FORMS[form](source.state_dict()), path)
    target = SwinUNet(TINY_UNET).eval()
    assert not torch.equal(_out(target), _out(source))
    load_official(target, path)
    assert torch.equal(_out(target), _out(source))


def test_checkpoint_without_derived_buffers_loads(source: SwinUNet, tmp_path: Path) -> None:
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith(("relative_position_index", "attn_mask"))}
    torch.save(sd, tmp_path / "slim.pth")
    assert torch.equal(_out(load_official(SwinUNet(TINY_UNET).eval(), tmp_path / "slim.pth")), _out(source))


def _expect_error(module: torch.nn.Module, state: dict, tmp_path: Path, *needles: str) -> str:
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_official(module, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message
    return message


def test_wrong_shape_names_the_key_and_both_shapes(source: SwinUNet, tmp_path: Path) -> None:
    sd = dict(source.state_dict())
    sd["out.2.weight"] = torch.zeros(4, 32, 3, 3)
    _expect_error(SwinUNet(TINY_UNET), sd, tmp_path, "out.2.weight", "(4, 32, 3, 3)", "(3, 32, 3, 3)", "shape")


def test_missing_and_unexpected_keys_are_listed(source: SwinUNet, tmp_path: Path) -> None:
    sd = dict(source.state_dict())
    del sd["time_embed.0.weight"]
    sd["extra.weight"] = torch.zeros(1)
    _expect_error(SwinUNet(TINY_UNET), sd, tmp_path, "missing", "time_embed.0.weight", "unexpected", "extra.weight")


def test_a_unet_checkpoint_does_not_load_into_the_autoencoder(source: SwinUNet, tmp_path: Path) -> None:
    message = _expect_error(VQAutoencoder(TINY_VQ), source.state_dict(), tmp_path, "VQAutoencoder", "missing")
    assert "more)" in message  # long lists are cut, the line stays readable


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": os.getcwd, "cls": Path}, path)
    with pytest.raises(CheckpointError, match="never unpickles") as caught:
        read_state_dict(path)
    assert "weights_only=False" not in str(caught.value) and "\n" not in str(caught.value)  # no advice to run it


@pytest.mark.parametrize(("content", "match"), [(b"", "not a readable"), (b"not a checkpoint", "not a readable")])
def test_unreadable_files_fail_clearly(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="no such"):
        read_state_dict(tmp_path / "missing.pth")


def test_non_tensor_entries_are_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1), "step": 3}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="'step' is a int"):
        read_state_dict(tmp_path / "mixed.pth")


def test_safetensors_round_trip(tiny_vq_model_config: ModelConfig, tmp_path: Path) -> None:
    model = randomize(SRModel(tiny_vq_model_config), seed=4).eval()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not list(tmp_path.glob("*.tmp"))


def test_fp16_storage_halves_the_file_and_loads_in_fp32(tiny_vq_model_config: ModelConfig, tmp_path: Path) -> None:
    model = randomize(SRModel(tiny_vq_model_config), seed=4).eval()
    save_model(model, tmp_path / "a.safetensors")
    save_model(model, tmp_path / "b.safetensors", dtype=torch.float16)
    ratio = (tmp_path / "b.safetensors").stat().st_size / (tmp_path / "a.safetensors").stat().st_size
    assert 0.45 < ratio < 0.6
    loaded = load_model(tmp_path / "b.safetensors")
    weight = loaded.unet.out[2].weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, model.unet.out[2].weight.half().float())


def test_foreign_safetensors_is_not_a_model_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a tadsr model file"):
        load_model(tmp_path / "other.safetensors")


def test_a_format_1_model_file_still_loads_with_its_residual_setting(tmp_path: Path,
                                                                     tiny_pixel_model_config: ModelConfig) -> None:
    """tadsr 0.1 wrote format 1: the residual re-parametrisation as ``unet.residual_scale`` in the UNet config."""
    import dataclasses
    import json

    from safetensors import safe_open

    from tadsr.checkpoints import FORMAT_VERSION, atomic_save_file, export_tensors
    from tadsr.config import to_dict

    config = dataclasses.replace(tiny_pixel_model_config, predict_residual=True)
    model = randomize(SRModel(config), seed=4)
    old = to_dict(config)
    del old["predict_residual"]
    old["unet"]["residual_scale"] = 4
    path = tmp_path / "old.safetensors"
    atomic_save_file(export_tensors(model.unet, "unet."), path,
                     {"format": "tadsr", "format_version": "1", "config": json.dumps(old)})
    loaded = load_model(path)
    assert loaded.config == config
    assert all(torch.equal(a, b) for a, b in zip(model.unet.state_dict().values(),
                                                 loaded.unet.state_dict().values(), strict=True))
    save_model(loaded, tmp_path / "new.safetensors")  # written back in today's format
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == FORMAT_VERSION == "2" and json.loads(meta["config"])["predict_residual"]


def test_a_model_file_of_an_unknown_format_version_names_it(tmp_path: Path, tiny_student_file: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tadsr.checkpoints import atomic_save_file

    with safe_open(str(tiny_student_file), framework="pt") as f:
        meta = f.metadata()
    path = tmp_path / "future.safetensors"
    atomic_save_file(load_file(str(tiny_student_file)), path, {**meta, "format_version": "9"})
    with pytest.raises(CheckpointError, match="future.safetensors: tadsr format version '9' is not supported"):
        load_model(path)
