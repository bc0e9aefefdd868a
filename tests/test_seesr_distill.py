"""Distilling SeeSR into a one-step TAD-SeeSR student (issue 34; paper Appendix B): the SeeSR family
(``tadsr.training.families.seesr``) on the tiny official-layout teacher of ``conftest.seesr_teacher_dir``.

The teacher-interface contract is ``tests/test_teacher_families.py``'s (SeeSR is one of its ``TEACHERS``). Here:
the recipe's values reach the run, the trainable subset is what the config says (frozen weights unchanged bit for
bit, the LoRA merged exactly), the end-to-end run (distil -> SIGKILL -> resume bit-identical -> ``tadsr upscale``
with the student folder), and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from conftest import kill_at_first_checkpoint, smooth_photos, torchrun

pytest.importorskip("diffusers")  # the test extra installs tadsr[sd]: this runs in CI

from tadsr.cli import main  # noqa: E402
from tadsr.losses.score import draw_grid_timesteps  # noqa: E402
from tadsr.training.config import train_config  # noqa: E402
from tadsr.training.distill import DistillTrainer  # noqa: E402
from tadsr.training.families import distill_config, open_teacher  # noqa: E402
from tadsr.training.families.seesr import SeeSRTeacher, merge_lora  # noqa: E402

TADSR = str(Path(sys.executable).parent / "tadsr")
WEIGHTS = "diffusion_pytorch_model.safetensors"
# the seesr preset at a CPU test's size: its recipe otherwise (lambdas, t grids, EMA, clipping, optimiser)
SMALL = ("data.gt_size=64", "run.batch_size=2", "run.amp=none", "data.workers=0", "family.teacher_steps=2",
         "data.val_count=1", "run.val_every=1000", "run.log_every=1")



def _teacher(folder: Path, *overrides: str) -> SeeSRTeacher:
    config, _ = distill_config(folder, preset="tiny", overrides=["family.teacher_steps=2", *overrides])
    return open_teacher(folder, config.family, torch.device("cpu"))  # type: ignore[return-value]


def _weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / part / WEIGHTS))


def test_the_seesr_preset_is_the_authors_recipe(seesr_teacher_dir: Path) -> None:
    config, note = distill_config(seesr_teacher_dir)
    assert note is not None and "seesr preset" in note
    d, o, run = config.distill, config.optim, config.run
    assert (d.lambda_distill, d.lambda_score, d.lambda_adv) == (0.2, 1.0, 0.2)
    assert (d.hsd_t_min, d.hsd_t_max, d.hsd_t_step) == (d.dis_t_min, d.dis_t_max, d.dis_t_step) == (20, 881, 20)
    assert d.dis_t_per_batch and (o.lr, o.weight_decay, o.grad_clip, o.ema_rate) == (2e-5, 1e-2, 1.0, 0.99)
    assert (run.batch_size, run.steps, run.amp, config.data.gt_size) == (8, 30000, "fp16", 512)
    assert config.family.trainable == "image-attention" and config.model is None
    assert config == train_config("seesr")


def test_grid_timesteps_are_the_authors_set() -> None:
    t = draw_grid_timesteps(20, 881, 20, 20000, torch.Generator().manual_seed(0))
    assert set(t.tolist()) == set(range(20, 881, 20))
    plain = draw_grid_timesteps(0, 7, 1, 50, torch.Generator().manual_seed(1))
    assert torch.equal(plain, torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("trainable", ["image-attention", "full", "lora"])
def test_the_trainable_subset_is_what_the_config_says(seesr_teacher_dir: Path, trainable: str) -> None:
    teacher = _teacher(seesr_teacher_dir, f"family.trainable={trainable}")
    student = teacher.make_student()
    learning = {name for name, p in student.named_parameters() if p.requires_grad}
    everything = {name for name, _ in student.named_parameters()}
    if trainable == "full":
        assert learning == everything
    elif trainable == "lora":
        assert learning and all(".lora_" in n and n.startswith("unet.") for n in learning)
        adapted = {n.split(".lora_")[0] for n in learning}
        assert all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in adapted)
        assert any(".image_attentions." in n for n in adapted) and any(".attn2." in n for n in adapted)
    else:
        assert learning == {n for n in everything if ".image_attentions." in n
                            or n.startswith("controlnet.controlnet_cond_embedding.")}
        assert any(n.startswith("unet.") for n in learning) and any(n.startswith("controlnet.") for n in learning)
    # the frozen weights are the teacher's own tensors (no copy); the trained ones are the student's
    teacher_params = dict(teacher.network.named_parameters())
    for name, p in student.named_parameters():
        if name in teacher_params:
            assert (p is teacher_params[name]) == (name not in learning), name


def test_a_merged_lora_is_the_adapted_network(seesr_teacher_dir: Path) -> None:
    teacher = _teacher(seesr_teacher_dir, "family.trainable=lora", "family.lora_rank=2")
    student = teacher.make_student()
    gen = torch.Generator().manual_seed(0)
    for name, p in student.named_parameters():
        if ".lora_up." in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.1
    lq = torch.rand(1, 3, 8, 8, generator=gen) * 2 - 1
    gt = torch.nn.functional.interpolate(lq, scale_factor=4)
    batch = {"lq": lq, "gt": gt, **teacher.targets(lq, gt, torch.Generator().manual_seed(1))}
    cond = teacher.condition(batch)
    adapted = teacher.student_x0(student, batch, cond).detach()
    assert not torch.allclose(adapted, teacher.student_x0(teacher.network, batch, cond))  # the LoRA acts
    plain = _teacher(seesr_teacher_dir, "family.trainable=full").make_student()  # the networks without LoRA
    plain.load_state_dict(merge_lora(student.state_dict()), strict=True)
    torch.testing.assert_close(teacher.student_x0(plain, batch, cond).detach(), adapted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("trainable", ["image-attention", "lora"])
def test_a_run_trains_only_its_subset(seesr_teacher_dir: Path, tmp_path: Path, trainable: str) -> None:
    """Two in-process steps at a large learning rate: the student folder's frozen weights are the teacher's bit
    for bit, the trained ones moved (LoRA: merged into the UNet's attention projections only)."""
    photos = smooth_photos(tmp_path / "photos")
    config, _ = distill_config(seesr_teacher_dir, preset="seesr", data_path=str(photos), steps=2,
                               overrides=[*SMALL, f"family.trainable={trainable}", "optim.lr=1e-2",
                                          "optim.ema_rate=0", "run.save_every=1000"])
    final = DistillTrainer(config, tmp_path / "run", seesr_teacher_dir, show_progress=False).run()
    assert final == tmp_path / "run" / "final" and (final / "tadsr_seesr.json").is_file()
    index = json.loads((final / "tadsr_seesr.json").read_text())
    assert index["variant"] == "tad-seesr" and index["steps"] == 1
    moved = set()
    for part in ("unet", "controlnet"):
        before, after = _weights(seesr_teacher_dir, part), _weights(final, part)
        assert before.keys() == after.keys()
        moved |= {f"{part}.{k}" for k in before if not torch.equal(before[k], after[k])}
    assert moved
    if trainable == "lora":
        assert all(k.startswith("unet.") and k.endswith(("to_q.weight", "to_k.weight", "to_v.weight",
                                                         "to_out.0.weight")) for k in moved), sorted(moved)[:3]
    else:
        assert all(".image_attentions." in k or k.startswith("controlnet.controlnet_cond_embedding.")
                   for k in moved), sorted(moved)[:3]
    for part in ("vae", "text_encoder", "dape"):  # the teacher's, unchanged
        for file in (seesr_teacher_dir / part).iterdir():
            assert (final / part / file.name).read_bytes() == file.read_bytes()


def _distill(teacher: Path, photos: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [TADSR, "distill", "--teacher", str(teacher), "--data", str(photos), "--out", str(out), "--steps",
            str(steps), "-q", *SMALL, "run.save_every=1", "run.keep_last=10", "distill.teacher_cache=4", *extra]


@pytest.mark.slow
def test_distil_resume_after_sigkill_and_upscale_with_the_student(seesr_teacher_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    photos = smooth_photos(tmp_path / "photos")
    steps = 4
    done = subprocess.run(_distill(seesr_teacher_dir, photos, tmp_path / "a", steps), capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "seesr preset's recipe" in done.stderr
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()
           if '"distill"' in line]
    assert len(log) == steps and all(k in log[-1] for k in ("hsd", "adv", "d_loss"))
    code, killed_at = kill_at_first_checkpoint(_distill(seesr_teacher_dir, photos, tmp_path / "b", steps),
                                               tmp_path / "b", env)
    assert code == -signal.SIGKILL and killed_at < f"step_{steps:08d}.pt"
    assert not (tmp_path / "b" / "final").exists()
    resumed = subprocess.run([*_distill(seesr_teacher_dir, photos, tmp_path / "b", steps), "--resume"],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    for part in ("unet", "controlnet"):
        a, b = (_weights(tmp_path / run / "final", part) for run in ("a", "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{part}, resumed from {killed_at}"
    teacher_unet = _weights(seesr_teacher_dir, "unet")
    assert any(not torch.equal(_weights(tmp_path / "a" / "final", "unet")[k], v) for k, v in teacher_unet.items())

    rgb = (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lr.png")
    result = CliRunner().invoke(main, ["upscale", "-i", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"),
                                       "--model", str(tmp_path / "a" / "final"), "-q"])
    assert result.exit_code == 0, result.stderr
    assert np.asarray(Image.open(tmp_path / "out" / "lr.png")).shape == (80, 112, 3)


def _one_line(args: list[str]) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, [line for line in result.stderr.strip().splitlines() if "recipe" not in line]


def test_a_one_step_folder_is_no_teacher_and_other_families_settings_are_refused(seesr_teacher_dir: Path,
                                                                                 tmp_path: Path) -> None:
    photos = smooth_photos(tmp_path / "photos")
    student = tmp_path / "tad-seesr"
    _teacher(seesr_teacher_dir).save_student(student, _teacher(seesr_teacher_dir).make_student())
    base = ["distill", "--data", str(photos), "--steps", "1", "-q"]
    code, lines = _one_line([*base, "--teacher", str(student), "--out", str(tmp_path / "r1")])
    assert code == 1 and len(lines) == 1 and "tad-seesr folder" in lines[0] and "--variant seesr" in lines[0], lines
    code, lines = _one_line([*base, "--teacher", str(seesr_teacher_dir), "--out", str(tmp_path / "r2"),
                             "family.noise_level=20"])
    assert code == 1 and len(lines) == 1 and "a setting of the diffusers family" in lines[0], lines
    code, lines = _one_line([*base, "--teacher", str(seesr_teacher_dir), "--out", str(tmp_path / "r3"),
                             "family.trainable=everything"])
    assert code == 1 and len(lines) == 1 and "family.trainable" in lines[0], lines
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))


def test_a_teacher_cache_of_other_settings_is_rebuilt_with_a_warning(seesr_teacher_dir: Path,
                                                                     tmp_path: Path) -> None:
    photos = smooth_photos(tmp_path / "photos")
    run = tmp_path / "run"

    def go(*extra: str) -> list[str]:
        result = CliRunner().invoke(main, ["distill", "--teacher", str(seesr_teacher_dir), "--data", str(photos),
                                           "--out", str(run), "--steps", "1", "-q", *SMALL, "distill.teacher_cache=2",
                                           *extra])
        assert result.exit_code == 0, result.stderr
        return result.stderr.splitlines()

    assert not any("teacher cache" in line for line in go())
    first = torch.load(run / "teacher_cache.pt", weights_only=True)
    assert {"prompt_embeds", "image_embeds", "z_lr", "z_gt", "z_tch", "noise"} <= set(first)
    other = tmp_path / "other"
    run.rename(other)
    run.mkdir()
    (other / "teacher_cache.pt").rename(run / "teacher_cache.pt")  # another run's cache, other settings
    lines = go("family.guidance=2.0")
    assert any("teacher cache of another teacher or other settings" in line for line in lines), lines
    again = torch.load(run / "teacher_cache.pt", weights_only=True)
    assert torch.equal(again["prompt_embeds"], first["prompt_embeds"])  # the same pairs and tags ...
    assert not torch.equal(again["z_tch"], first["z_tch"])  # ... and the target of the new guidance


@pytest.mark.slow
def test_torchrun_two_processes_distil_seesr_with_a_lora(seesr_teacher_dir: Path, tmp_path: Path) -> None:
    """DDP over the student's trainable subset (here the LoRA factors; the frozen weights are shared, not synced)."""
    photos = smooth_photos(tmp_path / "photos")
    result = torchrun(2, *_distill(seesr_teacher_dir, photos, tmp_path / "run", 2, "family.trainable=lora")[1:])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "final" / "tadsr_seesr.json").is_file()  # after the ranks' weights agreed
    assert result.stdout.count("tadsr: wrote") == 1
    # the two ranks built a chunk each of the teacher cache and broadcast it: the bits one process builds alone
    config, _ = distill_config(seesr_teacher_dir, data_path=str(photos), steps=2,
                               overrides=[*SMALL, "distill.teacher_cache=4", "family.trainable=lora"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (OMP_NUM_THREADS=1): the same sums in the same order
    try:
        alone = DistillTrainer(config, tmp_path / "alone", seesr_teacher_dir, show_progress=False).teacher_cache()
    finally:
        torch.set_num_threads(threads)
    shared = torch.load(tmp_path / "run" / "teacher_cache.pt", weights_only=True)
    assert shared.pop("key") and shared.keys() == alone.keys()
    assert all(torch.equal(shared[k], alone[k]) for k in alone)


def test_the_features_are_the_unets_skips_with_the_controlnets_residuals(seesr_teacher_dir: Path) -> None:
    """Against the UNet's own sum: the skips its up blocks receive (diffusers adds the ControlNet's residuals to
    the down blocks' outputs before the up path), taken with a hook; the features are the one before each
    downsampler (the authors' 2, 5, 8, 11 for SD-2-base)."""
    teacher = _teacher(seesr_teacher_dir)
    lq = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    gt = torch.nn.functional.interpolate(lq, scale_factor=4)
    batch = {"lq": lq, "gt": gt, **teacher.targets(lq, gt, torch.Generator().manual_seed(1))}
    cond = teacher.condition(batch)
    t = torch.tensor([3, 500])
    unet = teacher.network.unet
    received: list[tuple[torch.Tensor, ...]] = []
    hooks = [block.register_forward_pre_hook(lambda m, a, k: received.append(k["res_hidden_states_tuple"]),
                                             with_kwargs=True) for block in unet.up_blocks]
    try:
        with torch.no_grad():
            teacher.network(batch["z_gt"], t, cond)
    finally:
        for hook in hooks:
            hook.remove()
    skips = [s for chunk in reversed(received) for s in chunk]  # the UNet's down_block_res_samples, in order
    with torch.no_grad():
        features = teacher.process.encoder_features(batch["z_gt"], t, cond)
    index, expected = 0, []
    for block in unet.down_blocks:
        count = len(block.resnets) + (1 if block.downsamplers else 0)
        expected.append(skips[index + len(block.resnets)])  # after conv_in's skip: the block's last before its down
        index += count
    assert len(features) == len(expected) == len(unet.down_blocks)
    for got, want in zip(features, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
