"""``tadsr convert seesr`` and the converted folder's loader (issue 33), on a tiny fake release.

The release is built here: an SD-2-base-like diffusers folder (a tiny VAE saved as ``.bin``, a tiny CLIP text
encoder of the UNet's width 32, a CLIP tokenizer written from a few words, SD-2-base's scheduler config), the parity
fixtures' official ``unet/`` + ``controlnet/`` (``tests/data/seesr_parity/release``), RAM's ``{'model': ...}`` and
DAPE.pth's LoRA-only pickles from the official-layout state dicts of ``swin/`` and ``tagging/``. The converted
folder must give the parity fixtures' outputs (max |difference| <= 1e-5).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from conftest import _tokenizer  # noqa: E402  (a CLIP tokenizer of a few words, nothing downloaded)
from tadsr.checkpoints import CheckpointError  # noqa: E402
from tadsr.errors import ConfigError, TadsrError  # noqa: E402
from tadsr.seesr.convert import convert_seesr  # noqa: E402
from tadsr.seesr.dape import SwinConfig  # noqa: E402
from tadsr.seesr.folder import load_seesr, read_settings  # noqa: E402
from tadsr.seesr.parts import INDEX, TAD_SEESR_PROMPT  # noqa: E402
from tadsr.seesr.tags import TagHeadConfig, tags_of  # noqa: E402

FIXTURES = Path(__file__).parent / "data" / "seesr_parity"
TAGGING = FIXTURES / "tagging"
TOLERANCE = 1e-5
# SD-2-base's scheduler/scheduler_config.json (stabilityai/stable-diffusion-2-base): a PNDMScheduler config that
# SeeSR reads as a DDPMScheduler
SD2_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                 "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
                 "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None}


def _read(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(path).items()}  # clone: aligned memory


def _sizes() -> tuple[SwinConfig, TagHeadConfig]:
    swin = SwinConfig.from_dict(json.loads((FIXTURES / "swin" / "config.json").read_text()))
    config = json.loads((TAGGING / "config.json").read_text())
    head = TagHeadConfig.from_dict({**config["tagging_head"], "num_classes": config["num_classes"],
                                    "lora_alpha": config["lora_alpha"], "lora_r": config["lora_r"]})
    return swin, head


class Inputs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sd_base, self.release = root / "sd2-base", root / "release"
        self.ram, self.dape = root / "ram_swin_large_14m.pth", root / "DAPE.pth"
        self.tag_list, self.thresholds = root / "ram_tag_list.txt", root / "ram_tag_list_threshold.txt"

    def args(self, **changes: Any) -> dict[str, Any]:
        swin, head = _sizes()
        return {"sd_base": self.sd_base, "release": self.release, "ram": self.ram, "dape": self.dape,
                "variant": "tad-seesr", "tag_list": self.tag_list, "thresholds": self.thresholds, "swin": swin,
                "tag_head": head, **changes}

    def copy(self, root: Path) -> Inputs:
        shutil.copytree(self.root, root, dirs_exist_ok=True)
        return Inputs(root)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("seesr-inputs"))


def make_inputs(root: Path) -> Inputs:
    """A tiny release in the official layouts under ``root`` (SD-2-base-like parts, the parity fixtures' UNet and
    ControlNet, RAM and DAPE pickles, the tag files)."""
    made = Inputs(root)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 32], in_channels=3, out_channels=3,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  latent_channels=4, layers_per_block=1, scaling_factor=0.18215)
    vae.save_pretrained(made.sd_base / "vae", safe_serialization=False)  # a .bin, read weights-only
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=100, max_position_embeddings=16))
    text.save_pretrained(made.sd_base / "text_encoder")
    _tokenizer(made.sd_base / "tokenizer")  # the hub's layout: vocab.json, merges.txt and the two below
    (made.sd_base / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 16, "pad_token": "!", "do_lower_case": True,
         "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    (made.sd_base / "tokenizer" / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
         "unk_token": "<|endoftext|>"}))
    (made.sd_base / "scheduler").mkdir()
    (made.sd_base / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD2_SCHEDULER))
    shutil.copytree(FIXTURES / "release", made.release)
    swin_state = _read(FIXTURES / "swin" / "state.safetensors")
    tagging = _read(TAGGING / "state.safetensors")
    lora = ("lora_A", "lora_B")
    model = {f"visual_encoder.{k}": v for k, v in swin_state.items() if not k.endswith(lora)}
    model.update({k: v for k, v in tagging.items() if not k.endswith(lora)})
    # what RAM's checkpoint holds besides DAPE's parts, and derived buffers: all dropped unread
    model["visual_encoder.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    model["tag_encoder.encoder.layer.0.crossattention.self.query.weight"] = torch.ones(12, 12)
    model["text_decoder.cls.predictions.bias"] = torch.ones(30)
    torch.save({"model": model}, made.ram)
    dape = {f"visual_encoder.{k}": v for k, v in swin_state.items() if k.endswith(lora)}
    dape.update({k: v for k, v in tagging.items() if k.endswith(lora)})
    dape["tag_encoder.encoder.layer.2.crossattention.self.query.lora_A"] = torch.ones(8, 12)  # no tied layer: unused
    torch.save(dape, made.dape)
    shutil.copy(TAGGING / "tag_list.txt", made.tag_list)
    shutil.copy(TAGGING / "thresholds.txt", made.thresholds)
    made.text = text.eval()  # type: ignore[attr-defined]
    made.vae = vae.eval()  # type: ignore[attr-defined]
    return made


@pytest.fixture(scope="module")
def converted(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seesr-out") / "tad-seesr"
    return convert_seesr(**inputs.args(), out=out)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def _run_networks(parts: Any) -> dict[str, torch.Tensor]:
    io = _read(FIXTURES / "io.safetensors")
    with torch.no_grad(), parts.controlnet_image.attending(io["img"]), parts.unet_image.attending(io["img"]):
        down, mid = parts.controlnet(io["x"], io["t"], encoder_hidden_states=io["txt"], controlnet_cond=io["cond"],
                                     conditioning_scale=1.0, return_dict=False)
        eps = parts.unet(io["x"], io["t"], encoder_hidden_states=io["txt"],
                         down_block_additional_residuals=list(down), mid_block_additional_residual=mid,
                         return_dict=False)[0]
    return {**{f"down{i}": d for i, d in enumerate(down)}, "mid": mid, "eps": eps}


def test_the_converted_folder_gives_the_official_outputs(inputs: Inputs, converted: Path) -> None:
    parts = load_seesr(converted)
    io = _read(FIXTURES / "io.safetensors")
    out = _run_networks(parts)
    for name, value in out.items():
        assert (value - io[name]).abs().max().item() <= TOLERANCE, name
    # DAPE: LR -> embeddings, logits and tags of the official code
    tag_io = _read(TAGGING / "io.safetensors")
    lr = _read(TAGGING / "preprocess.safetensors")["lr"]
    with torch.no_grad():
        embeddings, tags = parts.dape(lr)
        logits = parts.dape.head(embeddings)
    assert (embeddings - tag_io["embeds_lr"]).abs().max().item() <= TOLERANCE
    assert (logits - tag_io["logits_lr"]).abs().max().item() <= TOLERANCE
    deleted = json.loads((TAGGING / "config.json").read_text())["delete_tag_index"]  # the fixture's; SeeSR's: none
    expected = json.loads((TAGGING / "tags.json").read_text(encoding="utf-8"))["tags_lr"]
    assert tags_of(logits, parts.dape.thresholds, parts.dape.tag_list, deleted) == expected
    assert parts.dape.deleted == () and tags == tags_of(logits, parts.dape.thresholds, parts.dape.tag_list)
    # SD-2-base's parts: the same networks, the scheduler SeeSR builds from its config, the tokenizer
    ids = torch.tensor([[0, 12, 13, 2, 1, 1]])
    with torch.no_grad():
        assert torch.equal(parts.text_encoder(ids)[0], inputs.text(ids)[0])  # type: ignore[attr-defined]
        latent = torch.randn(1, 4, 8, 8)
        assert torch.equal(parts.vae.decode(latent).sample, inputs.vae.decode(latent).sample)  # type: ignore
    assert type(parts.scheduler).__name__ == "DDPMScheduler"
    config = parts.scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end, config.num_train_timesteps) == \
        ("scaled_linear", 0.00085, 0.012, 1000)
    assert (config.steps_offset, config.prediction_type, config.timestep_spacing) == (1, "epsilon", "leading")
    assert parts.tokenizer("a cat").input_ids[0] == 0
    assert parts.settings == read_settings(converted)
    assert (parts.settings.variant, parts.settings.steps, parts.settings.timestep, parts.settings.prompt) == \
        ("tad-seesr", 1, 999, TAD_SEESR_PROMPT)
    for module in (parts.unet, parts.controlnet, parts.vae, parts.text_encoder, parts.dape):
        assert not module.training
        assert all(p.dtype == torch.float32 for p in module.parameters())
    index = json.loads((converted / INDEX).read_text())
    assert set(index["sources"]) >= {"ram/ram_swin_large_14m.pth", "dape/DAPE.pth", "release/unet/config.json",
                                     "release/controlnet/diffusion_pytorch_model.safetensors",
                                     "sd_base/vae/diffusion_pytorch_model.bin",
                                     "sd_base/text_encoder/model.safetensors",
                                     "tag_list/ram_tag_list.txt", "thresholds/ram_tag_list_threshold.txt"}
    files = sorted(str(p.relative_to(converted)) for p in converted.rglob("*") if p.is_file())
    assert all(p.endswith((".safetensors", ".json", ".txt")) for p in files), files
    dape = load_file(converted / "dape" / "dape.safetensors")
    assert not any(k.endswith(("lora_A", "lora_B")) or k.startswith(("tag_encoder", "text_decoder")) for k in dape)


def test_fp16_stores_half_and_loads_float32(inputs: Inputs, converted: Path, tmp_path: Path) -> None:
    out = convert_seesr(**inputs.args(variant="seesr"), out=tmp_path / "half", fp16=True)
    half = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    full = load_file(converted / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in half.values())
    assert all(torch.equal(half[k], full[k].half()) for k in full)  # float16 rounding, nothing else
    parts = load_seesr(out)
    assert all(p.dtype == torch.float32 for p in parts.unet.parameters())
    io = _read(FIXTURES / "io.safetensors")
    eps = _run_networks(parts)["eps"]
    assert (eps - io["eps"]).abs().max().item() <= 2e-2 * io["eps"].abs().max().item()
    assert (parts.settings.variant, parts.settings.steps, parts.settings.guidance) == ("seesr", 50, 5.5)


def test_missing_controlnet_is_one_line_exit_1_through_the_cli(inputs: Inputs, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from tadsr.cli import main

    bad = inputs.copy(tmp_path / "in")
    shutil.rmtree(bad.release / "controlnet")
    out = tmp_path / "out" / "model"
    out.parent.mkdir()
    args = ["convert", "seesr", "--variant", "tad-seesr", "--sd-base", str(bad.sd_base), "--release",
            str(bad.release), "--ram", str(bad.ram), "--dape", str(bad.dape), "--tag-list", str(bad.tag_list),
            "--thresholds", str(bad.thresholds), "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "controlnet/" in lines[0] and str(bad.release) in lines[0], lines
    _nothing_written(out)
    good = [*args[:4], "--sd-base", str(inputs.sd_base), "--release", str(inputs.release), *args[8:]]
    result = CliRunner().invoke(main, good)  # the command converts DAPE's real sizes: the tiny one does not fit
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "ram_swin_large_14m.pth: visual_encoder.layers.0.blocks.0.attn.proj.bias has shape (24,), DAPE's is " \
           "(192,)" in result.stderr
    _nothing_written(out)
    import tadsr.seesr.convert as module

    swin, head = _sizes()
    monkeypatch.setattr(module, "convert_seesr", functools.partial(convert_seesr, swin=swin, tag_head=head))
    result = CliRunner().invoke(main, good)
    assert result.exit_code == 0 and result.stdout.strip() == f"wrote {out}", result.stderr
    assert read_settings(out).variant == "tad-seesr"
    # the options of other kinds are refused, and the required ones named
    result = CliRunner().invoke(main, [*args, "--unet", "x.pth"])
    assert result.exit_code == 1 and "--unet: not used by `tadsr convert seesr`" in result.stderr
    result = CliRunner().invoke(main, ["convert", "seesr", "-o", str(out)])
    assert result.exit_code == 1 and "--sd-base, --release, --ram, --dape, --variant: required" in result.stderr
    result = CliRunner().invoke(main, ["convert", "--fp16", "--unet", "x.pth", "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 1 and "--fp16: not used by `tadsr convert resshift`" in result.stderr


def _damage(case: str, bad: Inputs) -> None:
    """Make input ``case`` bad in ``bad`` (a copy of the inputs)."""
    if case == "sd part":
        shutil.rmtree(bad.sd_base / "tokenizer")
    elif case == "vae class":
        config = json.loads((bad.sd_base / "vae" / "config.json").read_text())
        (bad.sd_base / "vae" / "config.json").write_text(json.dumps({**config, "_class_name": "VQModel"}))
    elif case == "truncated":
        path = bad.sd_base / "text_encoder" / "model.safetensors"
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "ram shape":
        state = torch.load(bad.ram, weights_only=True)
        state["model"]["image_proj.weight"] = torch.zeros(512, 40)
        torch.save(state, bad.ram)
    elif case == "dape shape":
        state = torch.load(bad.dape, weights_only=True)
        state["visual_encoder.layers.1.blocks.0.attn.qkv.lora_A"] = torch.zeros(16, 40)
        torch.save(state, bad.dape)
    elif case == "pickle":
        state = torch.load(bad.ram, weights_only=True)
        torch.save({**state, "args": argparse.Namespace(lr=1e-4)}, bad.ram)
    elif case == "no lora":
        shutil.copy(bad.ram, bad.dape)
    elif case == "unet .bin pickle":
        (bad.release / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        torch.save({"x": argparse.Namespace()}, bad.release / "unet" / "diffusion_pytorch_model.bin")
    elif case == "scheduler v":
        (bad.sd_base / "scheduler" / "scheduler_config.json").write_text(
            json.dumps({**SD2_SCHEDULER, "prediction_type": "v_prediction"}))


BAD = {
    "sd part": (ConfigError, "no tokenizer/ folder"),
    "vae class": (ConfigError, "_class_name = 'VQModel': not one of AutoencoderKL"),
    "truncated": (ConfigError, "model.safetensors: not a readable safetensors file"),
    "ram shape": (CheckpointError, "ram_swin_large_14m.pth: image_proj.weight has shape (512, 40)"),
    "dape shape": (CheckpointError, "DAPE.pth: visual_encoder.layers.1.blocks.0.attn.qkv.lora_A has shape (16, 40)"),
    "pickle": (CheckpointError, "ram_swin_large_14m.pth: it holds a Python object (argparse.Namespace)"),
    "no lora": (CheckpointError, "DAPE.pth: holds no LoRA tensors"),
    "unet .bin pickle": (CheckpointError, "diffusion_pytorch_model.bin: it holds a Python object"),
    "scheduler v": (ConfigError, "prediction_type = \"v_prediction\""),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_input_is_one_line_and_writes_nothing(case: str, inputs: Inputs, tmp_path: Path) -> None:
    bad = inputs.copy(tmp_path / "in")
    _damage(case, bad)
    out = tmp_path / "out" / "model"
    out.parent.mkdir()
    error, needle = BAD[case]
    with pytest.raises(error) as err:
        convert_seesr(**bad.args(), out=out)
    assert needle in _one_line(err), str(err.value)
    _nothing_written(out)


def test_the_output_and_the_tag_files(inputs: Inputs, converted: Path, tmp_path: Path) -> None:
    with pytest.raises(TadsrError) as err:
        convert_seesr(**inputs.args(), out=converted)
    assert "exists; pass --overwrite" in _one_line(err)
    plain = tmp_path / "mine"
    (plain / "keep").mkdir(parents=True)
    with pytest.raises(TadsrError) as err:
        convert_seesr(**inputs.args(), out=plain, overwrite=True)
    assert "not a SeeSR folder written by tadsr" in _one_line(err)
    assert (plain / "keep").is_dir()
    with pytest.raises(ConfigError) as err:
        convert_seesr(**inputs.args(tag_list=None), out=tmp_path / "x")
    assert "--tag-list: needed to convert SeeSR; pass RAM's ram/data/ram_tag_list.txt" in _one_line(err)
    short = tmp_path / "short.txt"
    short.write_text("one\ntwo\n")
    with pytest.raises(ConfigError) as err:
        convert_seesr(**inputs.args(tag_list=short), out=tmp_path / "x")
    assert "2 names for a tag head of 10 classes" in _one_line(err)
    _nothing_written(tmp_path / "x")


def test_overwrite_replaces_a_converted_folder(inputs: Inputs, converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    shutil.copytree(converted, out)
    (out / "stale.txt").write_text("old")
    convert_seesr(**inputs.args(variant="seesr"), out=out, overwrite=True)
    assert not (out / "stale.txt").exists() and read_settings(out).variant == "seesr"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_killed_conversions_folder_is_removed_by_the_next(tmp_path: Path) -> None:
    from tadsr.seesr.convert import remove_stale_folders

    out = tmp_path / "model"
    dead = tmp_path / ".model.999999999.abcd_123.tmp"  # no such process
    live = tmp_path / f".model.{os.getpid()}.abcd_123.tmp"
    other = tmp_path / ".model.999999999.abcd_123.keep"
    for folder in (dead, live, other):
        (folder / "unet").mkdir(parents=True)
    with pytest.warns(RuntimeWarning, match="interrupted conversion"):
        assert remove_stale_folders(out) == [dead]
    assert not dead.exists() and live.is_dir() and other.is_dir()


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("format", "other", "format = \"other\": not 'tadsr-seesr'"),
    ("format_version", 2, "format_version = 2: this tadsr reads version 1"),
    ("variant", "sdxl", "variant = \"sdxl\": not one of seesr, tad-seesr"),
    ("steps", 0, "steps = 0: not an integer from 1 to 1000"),
    ("guidance", "5", "guidance = \"5\": not a number"),
    ("timestep", True, "timestep = true: not an integer"),
    ("prompt", None, "prompt = null: not a text"),
    ("process_size", -8, "process_size = -8: not an integer from 0 to 65536"),
])
def test_the_index_is_checked_key_by_key(converted: Path, tmp_path: Path, key: str, value: Any,
                                         needle: str) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    index = json.loads((converted / INDEX).read_text())
    (folder / INDEX).write_text(json.dumps({**index, key: value}))
    with pytest.raises(ConfigError) as err:
        read_settings(folder)
    assert needle in _one_line(err) and INDEX in str(err.value)


def test_a_folder_records_the_short_side_rule_and_an_older_one_has_the_official(converted: Path,
                                                                              tmp_path: Path) -> None:
    assert json.loads((converted / INDEX).read_text())["process_size"] == 512
    folder = tmp_path / "m"
    folder.mkdir()
    index = json.loads((converted / INDEX).read_text())
    del index["process_size"]
    (folder / INDEX).write_text(json.dumps(index))
    assert read_settings(folder).process_size == 512


def test_a_damaged_dape_config_is_one_line(converted: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(converted, folder)
    path = folder / "dape" / "config.json"
    config = json.loads(path.read_text())
    config["swin"]["depths"] = [2, "2"]
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        load_seesr(folder)
    assert "swin.depths = [2, \"2\"]: not a list" in _one_line(err)
