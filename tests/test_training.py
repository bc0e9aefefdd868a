"""Trainers: one distillation step, ablation switches, learning, exact resume after SIGKILL, torchrun, failures."""

from __future__ import annotations

import dataclasses
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
from safetensors.torch import load_file

from conftest import kill_at_first_checkpoint, torchrun
from tadsr.cli import main
from tadsr.model import load_model, save_model
from tadsr.training.config import apply_overrides, load_config_file, train_config
from tadsr.training.distill import DistillTrainer
from tadsr.training.trainer import TrainingError

TADSR = str(Path(sys.executable).parent / "tadsr")


def tiny_config(photo_dir: Path, *overrides: str):  # noqa: ANN201
    return apply_overrides(train_config("tiny"), [f"data.path={photo_dir}", "run.log_every=1", *overrides])


def _trainer(photo_dir: Path, teacher_file: Path, run_dir: Path, *overrides: str) -> DistillTrainer:
    return DistillTrainer(tiny_config(photo_dir, *overrides), run_dir, teacher=teacher_file, show_progress=False)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_a_distillation_step_moves_student_and_discriminator_not_teacher(photo_dir: Path, teacher_file: Path,
                                                                        tmp_path: Path) -> None:
    trainer = _trainer(photo_dir, teacher_file, tmp_path)
    teacher, student, disc = _params(trainer.teacher.network), _params(trainer.student), _params(trainer.discriminator)
    terms = trainer.train_step(next(trainer.batches()))
    assert set(terms) == {"d_loss", "d_acc", "d_pair_acc", "d_gap", "d_spread", "distill", "hsd", "adv", "loss"}
    assert all(np.isfinite(v) for v in terms.values())
    assert 0 <= terms["d_acc"] <= 1 and 0 <= terms["d_pair_acc"] <= 1
    assert all(torch.equal(a, b) for a, b in zip(teacher, _params(trainer.teacher.network), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(student, _params(trainer.student), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(disc, _params(trainer.discriminator), strict=True))
    assert all(not p.requires_grad for p in trainer.teacher.network.parameters())


@pytest.mark.parametrize("target", ["teacher", "gt"])
def test_hsd_compares_with_the_configured_target(photo_dir: Path, teacher_file: Path, tmp_path: Path,
                                                 target: str) -> None:
    """distill.score_target: HSD's z^tch is the teacher's T-step output (the paper) or the GT latent (the authors'
    score_distill_target option); the loss gets exactly that tensor."""
    trainer = _trainer(photo_dir, teacher_file, tmp_path, f"distill.score_target={target}", "distill.teacher_cache=4")
    seen = []
    score = trainer.score_loss

    def spy(z_s, z_target, *args):  # noqa: ANN001, ANN002, ANN202
        seen.append(z_target)
        return score(z_s, z_target, *args)

    trainer.score_loss = spy
    batch = next(trainer.batches())
    pair = trainer.pair(batch)
    trainer.train_step(batch)
    assert len(seen) == 1 and torch.equal(seen[0], pair.z_tch if target == "teacher" else pair.z_gt)
    assert not torch.equal(pair.z_tch, pair.z_gt)


def test_the_discriminator_is_frozen_during_the_generator_step(photo_dir: Path, teacher_file: Path,
                                                               tmp_path: Path) -> None:
    """D trains in its own step; in the G step its weights take no gradient (it still passes one to the student)."""
    trainer = _trainer(photo_dir, teacher_file, tmp_path)
    seen: list[set[bool]] = []
    trainer.discriminator.register_forward_pre_hook(
        lambda module, args: seen.append({p.requires_grad for p in module.parameters()}))
    grads_after_d: list[torch.Tensor] = []
    step_d = trainer.optimizer_step

    def record(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        step_d(optimizer, loss)
        if optimizer is trainer.opt_d:
            grads_after_d.extend(p.grad.clone() for p in trainer.discriminator.parameters())

    trainer.optimizer_step = record
    trainer.train_step(next(trainer.batches()))
    assert seen == [{True}, {False}]  # the D step, then the G step
    assert any(g.abs().sum() > 0 for g in grads_after_d)
    # the G step left D's gradients as the D step made them, and D is trainable again afterwards
    assert all(torch.equal(g, p.grad) for g, p in zip(grads_after_d, trainer.discriminator.parameters(), strict=True))
    assert all(p.requires_grad for p in trainer.discriminator.parameters())


@pytest.mark.parametrize(("overrides", "keys"), [
    (("distill.score_distill=sds", "distill.discriminator=plain"),
     {"d_loss", "d_acc", "d_pair_acc", "d_gap", "d_spread", "distill", "sds", "adv", "loss"}),
    (("distill.score_distill=none", "distill.discriminator=none"), {"distill", "loss"}),
])
def test_ablation_switches_change_the_objective(photo_dir: Path, teacher_file: Path, tmp_path: Path,
                                                overrides: tuple[str, ...], keys: set[str]) -> None:
    trainer = _trainer(photo_dir, teacher_file, tmp_path, *overrides)
    assert set(trainer.train_step(next(trainer.batches()))) == keys


def test_the_discriminator_logs_its_separation_and_keeps_to_its_t_range(photo_dir: Path, teacher_file: Path,
                                                                        tmp_path: Path) -> None:
    """On each sample's mean logit, before the D step: d_acc, the share of samples on the right side of 0;
    d_pair_acc, the share of pairs (same LR, t, noise) ranked real above fake; d_gap, the mean pair margin; d_spread,
    D(real)'s spread. ``distill.dis_t_max`` bounds the discriminator's t (0: the paper's t < T-1)."""
    trainer = _trainer(photo_dir, teacher_file, tmp_path, "distill.dis_t_max=1", "run.batch_size=4")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    trainer.discriminator.register_forward_hook(lambda module, args, out: seen.append((args[1], out.detach())))
    terms = trainer.train_step(next(trainer.batches()))
    t, out = seen[0]  # the D step's forward: real then fake, at the same t
    assert (t == 0).all()
    real, fake = (half.mean(dim=1) for half in out.chunk(2))
    assert terms["d_gap"] == pytest.approx(float(real.mean() - fake.mean()), abs=1e-6)
    assert terms["d_acc"] == pytest.approx(float(((real > 0).float().mean() + (fake < 0).float().mean()) / 2))
    assert terms["d_pair_acc"] == pytest.approx(float((real > fake).float().mean()))
    assert terms["d_spread"] == pytest.approx(float(real.std(unbiased=False)), abs=1e-6)
    last = trainer.teacher.process.num_timesteps - 1
    with pytest.raises(ValueError, match=f"dis_t_max={last + 1}.*below T-1"):
        _trainer(photo_dir, teacher_file, tmp_path / "b", f"distill.dis_t_max={last + 1}")


@pytest.mark.slow
def test_tiny_distillation_lowers_the_distillation_loss(photo_dir: Path, teacher_file: Path, tmp_path: Path) -> None:
    trainer = _trainer(photo_dir, teacher_file, tmp_path, "run.steps=16", "distill.teacher_cache=4",
                       "optim.lr=1e-3", "optim.warmup=1", "run.val_every=1000", "run.save_every=1000")
    final = trainer.run()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    distill = [r["distill"] for r in log if "distill" in r]
    assert len(distill) == 16
    assert np.mean(distill[-4:]) < 0.8 * np.mean(distill[:4])
    assert final.is_file() and (tmp_path / "teacher_cache.pt").is_file()


def test_teacher_cache_is_reused_only_for_its_own_teacher(photo_dir: Path, teacher_file: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tadsr.training.families.resshift import ResShiftTeacher

    calls = []
    build = ResShiftTeacher.targets
    monkeypatch.setattr(ResShiftTeacher, "targets", lambda self, *a: calls.append(1) or build(self, *a))
    run_dir = tmp_path / "run"
    first = _trainer(photo_dir, teacher_file, run_dir, "distill.teacher_cache=4")
    first.teacher_cache()
    built = len(calls)
    assert built > 0
    again = _trainer(photo_dir, teacher_file, run_dir, "distill.teacher_cache=4").teacher_cache()
    assert len(calls) == built and set(again) == {"lq", "gt", "z_y", "z_gt", "noise", "z_tch"}
    _trainer(photo_dir, teacher_file, run_dir, "distill.teacher_cache=8").teacher_cache()
    assert len(calls) > built  # another cache size: rebuilt
    other = tmp_path / "other_teacher.safetensors"
    model = load_model(teacher_file)
    with torch.no_grad():
        next(model.unet.parameters()).add_(1.0)
    save_model(model, other)
    count = len(calls)
    _trainer(photo_dir, other, run_dir, "distill.teacher_cache=8").teacher_cache()
    assert len(calls) > count  # another teacher: rebuilt, not the stale targets


def test_non_finite_loss_stops_naming_term_and_step(photo_dir: Path, teacher_file: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tadsr.losses import DistillationLoss

    monkeypatch.setattr(DistillationLoss, "__call__", lambda self, a, b: (a - b).flatten(1).mean(1) * float("nan"))
    trainer = _trainer(photo_dir, teacher_file, tmp_path, "run.steps=3")
    with pytest.raises(TrainingError, match=r"step 1: loss term 'distill' is not finite"):
        trainer.run()
    assert not (tmp_path / "final.safetensors").exists() and not (tmp_path / "checkpoints").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TADSR, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _prepare(*args: str) -> None:
    """`tadsr ARGS` in this process, for a run that only prepares what a test then checks (a run to resume, a
    checkpoint to damage): the same command without an interpreter's start; it must succeed."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0 and result.exception is None, result.stderr or result.exc_info


def _distill_args(photo_dir: Path, teacher_file: Path, out: Path, steps: int) -> list[str]:
    return ["distill", "--preset", "tiny", "--teacher", str(teacher_file), "--data", str(photo_dir), "--out", str(out),
            "--steps", str(steps), "-q", "run.save_every=2", "run.val_every=1000", "run.keep_last=10",
            "run.log_every=1"]


@pytest.mark.slow
def test_sigkill_and_resume_reach_bit_identical_weights(photo_dir: Path, teacher_file: Path, tmp_path: Path) -> None:
    steps = 8
    done = _cli(*_distill_args(photo_dir, teacher_file, tmp_path / "a", steps))
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code, killed_at = kill_at_first_checkpoint([TADSR, *_distill_args(photo_dir, teacher_file, tmp_path / "b", steps)],
                                               tmp_path / "b", env, timeout=120)
    # the kill landed mid-run: the process died of it, before its last checkpoint and its final model
    assert code == -signal.SIGKILL, code
    assert killed_at < f"step_{steps:08d}.pt" and not (tmp_path / "b" / "final.safetensors").exists()
    resumed = _cli(*_distill_args(photo_dir, teacher_file, tmp_path / "b", steps), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(tmp_path / "a" / "final.safetensors")), load_file(str(tmp_path / "b" / "final.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed from {killed_at}"
    ca = torch.load(tmp_path / "a" / "checkpoints" / f"step_{steps:08d}.pt", weights_only=True)
    cb = torch.load(tmp_path / "b" / "checkpoints" / f"step_{steps:08d}.pt", weights_only=True)
    for part in ("student", "discriminator"):
        assert all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part]), part


@pytest.mark.slow
def test_corrupt_checkpoint_is_refused(photo_dir: Path, teacher_file: Path, tmp_path: Path) -> None:
    _prepare(*_distill_args(photo_dir, teacher_file, tmp_path, 2))
    ckpt = tmp_path / "checkpoints" / "step_00000002.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    result = _cli(*_distill_args(photo_dir, teacher_file, tmp_path, 4), "--resume")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1
    assert "step_00000002.pt: not a readable training checkpoint" in lines[0]


@pytest.mark.slow
def test_torchrun_two_processes_agree(photo_dir: Path, teacher_file: Path, tmp_path: Path) -> None:
    result = torchrun(2, *_distill_args(photo_dir, teacher_file, tmp_path, 2))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "final.safetensors").is_file()  # written after the ranks' weights were checked equal
    assert result.stdout.count("tadsr: wrote") == 1  # rank 0 speaks for the job
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "distill" in r] == [1, 2]  # only rank 0 logs


@pytest.mark.slow
def test_teacher_training_produces_a_model_upscale_accepts(photo_dir: Path, tmp_path: Path) -> None:
    import tadsr

    result = CliRunner().invoke(main, ["train-teacher", "--preset", "tiny", "--data", str(photo_dir), "--out",
                                       str(tmp_path), "--steps", "3", "-q", "run.val_every=3", "run.log_every=1",
                                       "model.unet.model_channels=32", "model.unet.swin_embed_dim=32"])
    assert result.exit_code == 0, result.stderr
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "mse" in r] == [1, 2, 3] and "val_psnr" in log[-1]
    assert (tmp_path / "val" / "step_00000003.png").is_file()
    up = tadsr.Upscaler(tadsr.open_model(tmp_path / "final.safetensors", device="cpu", steps=1))
    assert up.upscale(np.zeros((20, 24, 3), np.uint8)).shape == (80, 96, 3)


@pytest.mark.slow
def test_a_teacher_fine_tuned_from_a_file_starts_from_its_weights_and_architecture(photo_dir: Path, teacher_file: Path,
                                                                                   tmp_path: Path) -> None:
    from tadsr.training.teacher import TeacherTrainer

    # lr 0: the weights stay the file's, over a few steps (checkpoints included) as over the preset's 200
    config = tiny_config(photo_dir, "run.steps=3", "run.save_every=2", "run.val_every=1000", "optim.lr=0")
    trainer = TeacherTrainer(config, tmp_path / "a", init=teacher_file, show_progress=False)
    start = load_model(teacher_file)
    assert trainer.config.model == start.config  # the file's architecture and schedule, not the tiny preset's
    final = load_model(trainer.run())
    assert final.config == start.config
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), start.state_dict().values(), strict=True))
    moved = TeacherTrainer(tiny_config(photo_dir, "run.val_every=1000", "run.steps=1"), tmp_path / "b",
                           init=teacher_file, show_progress=False)
    moved.run()
    assert not all(torch.equal(a, b) for a, b in zip(moved.network.state_dict().values(),
                                                       start.unet.state_dict().values(), strict=True))
    missing = _cli("train-teacher", "--init", str(tmp_path / "none.safetensors"), "--data", str(photo_dir), "--out",
                   str(tmp_path / "c"), "--steps", "1", "-q")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "none.safetensors" in missing.stderr and not (tmp_path / "c" / "final.safetensors").exists()


def test_dry_run_prints_the_resolved_config_and_bad_overrides_fail(teacher_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["distill", "--preset", "tiny", "--teacher", str(teacher_file), "--out",
                                  str(tmp_path), "--dry-run", "distill.lambda_score=0.5", "run.amp=bf16"])
    assert result.exit_code == 0
    config = json.loads(result.stdout)
    assert config["distill"]["lambda_score"] == 0.5 and config["run"]["amp"] == "bf16"
    bad = runner.invoke(main, ["distill", "--teacher", str(teacher_file), "--out", str(tmp_path), "--dry-run",
                               "distill.lamda=1"])
    assert bad.exit_code == 1 and "unknown key 'lamda'" in bad.stderr


def test_the_old_name_lambda_hsd_is_accepted_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match="distill.lambda_hsd is now distill.lambda_score"):
        config = apply_overrides(train_config("tiny"), ["distill.lambda_hsd=0.5"])
    assert config.distill.lambda_score == 0.5
    path = tmp_path / "old.yaml"
    path.write_text("preset: tiny\ndistill:\n  lambda_hsd: 2.0\n")
    with pytest.warns(FutureWarning, match="lambda_hsd"):
        assert load_config_file(path).distill.lambda_score == 2.0


def test_a_config_saved_by_an_older_release_migrates_silently_on_resume() -> None:
    """tadsr 0.1 saved lambda_hsd and unet.residual_scale in its checkpoints; a resumed run reads them as today's."""
    import warnings

    from tadsr.training.config import config_from_dict, config_to_dict

    old = config_to_dict(train_config("tiny"))
    old["distill"]["lambda_hsd"] = old["distill"].pop("lambda_score")
    old["model"]["unet"]["residual_scale"] = 4
    del old["model"]["predict_residual"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_from_dict(old, warn_renamed=False) == train_config("tiny")


def test_yaml_config_starts_from_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nrun:\n  steps: 7\ndistill:\n  discriminator: plain\n")
    config = load_config_file(path)
    assert config.run.steps == 7 and config.distill.discriminator == "plain" and config.run.batch_size == 4
    path.write_text("preset: tiny\nrun:\n  stepz: 7\n")
    with pytest.raises(ValueError, match="stepz"):
        load_config_file(path)


def test_distill_takes_the_recipe_of_its_teachers_architecture(teacher_file: Path, tmp_path: Path) -> None:
    from tadsr.presets import model_config, tiny_model_config
    from tadsr.training.config import infer_train_preset

    assert infer_train_preset(model_config("realsr-x4", role="student")) == "realsr-x4"
    assert infer_train_preset(model_config("faceir")) == "faceir"
    assert infer_train_preset(tiny_model_config()) == "tiny"
    result = CliRunner().invoke(main, ["distill", "--teacher", str(teacher_file), "--out", str(tmp_path), "--dry-run"])
    assert result.exit_code == 0 and "--preset tiny (the teacher's architecture)" in result.stderr
    assert json.loads(result.stdout)["run"]["batch_size"] == 4  # the tiny recipe


def test_each_rank_takes_its_own_gpu_and_cpu_stays_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device selection per LOCAL_RANK (torch.cuda mocked: 4 GPUs), and the backend that follows from it."""
    from tadsr import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [distributed.rank_device(torch.device("cuda"), r) for r in (0, 1, 5)] == [
        torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 1)]
    assert distributed.rank_device(torch.device("cuda", 2), 0) == torch.device("cuda", 2)  # as the user said
    assert distributed.rank_device(torch.device("cpu"), 3) == torch.device("cpu")
    assert distributed.backend(torch.device("cuda", 1)) == "nccl" and distributed.backend(torch.device("cpu")) == "gloo"


def test_bf16_on_a_gpu_without_it_is_one_line_before_anything_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from tadsr.errors import ConfigError
    from tadsr.training.trainer import check_amp

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(ConfigError, match="run.amp = 'bf16': cuda:0 does not support bfloat16"):
        check_amp(torch.device("cuda", 0), "bf16")
    check_amp(torch.device("cuda", 0), "fp16")
    check_amp(torch.device("cpu"), "bf16")  # CPU autocast runs bfloat16


def test_the_unfrozen_teacher_quirk_keeps_no_gradients(photo_dir: Path, teacher_file: Path, tmp_path: Path) -> None:
    trainer = _trainer(photo_dir, teacher_file, tmp_path, "family.unfrozen_teacher=true")
    trainer.train_step(next(trainer.batches()))
    assert all(p.requires_grad for p in trainer.teacher.network.parameters())  # the quirk: the teacher is trainable
    assert all(p.grad is None for p in trainer.teacher.network.parameters())  # but no gradient memory is kept


def test_a_student_setting_that_cannot_change_is_one_line_before_any_work(photo_dir: Path, teacher_file: Path,
                                                                          tmp_path: Path) -> None:
    from tadsr.model import read_model_config
    from tadsr.training.config import check_model_overrides

    teacher = read_model_config(teacher_file)
    kappa = teacher.schedule.kappa
    restated = [f"model.schedule.kappa={kappa}", "optim.lr=1e-4"]
    check_model_overrides(teacher, restated, "the teacher's", "")  # restating it is fine
    result = _cli(*_distill_args(photo_dir, teacher_file, tmp_path / "run", 2),
                  f"model.schedule.kappa={kappa + 0.5}", "model.unet.model_channels=96")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"model.schedule.kappa={kappa + 0.5} (the teacher's: {kappa})" in line
    assert "model.unet.model_channels=96" in line and "teacher's architecture" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resume_honours_bookkeeping_and_names_each_setting_it_keeps(photo_dir: Path, teacher_file: Path,
                                                                    tmp_path: Path) -> None:
    from tadsr.training.config import resumed_config

    first = tiny_config(photo_dir, "run.steps=4", "optim.lr=1e-4")
    again = tiny_config(photo_dir, "run.steps=8", "run.log_every=5", "optim.lr=3e-4", "distill.lambda_adv=0.1")
    config, ignored = resumed_config(first, again)
    assert config.run.steps == 8 and config.run.log_every == 5 and config.optim.lr == 1e-4
    assert ignored == ["optim.lr=0.0003 (kept: 0.0001)", "distill.lambda_adv=0.1 (kept: 0.02)"]
    assert resumed_config(first, first) == (first, [])
    run = tmp_path / "run"
    _prepare(*_distill_args(photo_dir, teacher_file, run, 2))
    resumed = _cli(*_distill_args(photo_dir, teacher_file, run, 3), "--resume", "optim.lr=5e-4")
    assert resumed.returncode == 0, resumed.stderr
    warning = [line for line in resumed.stderr.splitlines() if "resumed with the run's own settings" in line]
    assert len(warning) == 1 and "optim.lr=0.0005 (kept: " in warning[0] and "model." not in warning[0]


@pytest.mark.parametrize("hinge", ["per-logit", "mean"])
def test_the_discriminator_hinge_is_per_logit_or_on_the_mean(photo_dir: Path, teacher_file: Path, tmp_path: Path,
                                                              hinge: str) -> None:
    """distill.hinge: Eq. 12 on each logit then their mean (the authors'), or on each sample's mean logit."""
    trainer = _trainer(photo_dir, teacher_file, tmp_path, f"distill.hinge={hinge}", "run.batch_size=4")
    seen: list[torch.Tensor] = []
    trainer.discriminator.register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    terms = trainer.train_step(next(trainer.batches()))
    real, fake = seen[0].chunk(2)
    relu = torch.nn.functional.relu
    if hinge == "per-logit":
        expected = relu(1 - real).mean(1) + relu(1 + fake).mean(1)
    else:
        expected = relu(1 - real.mean(1)) + relu(1 + fake.mean(1))
    assert terms["d_loss"] == pytest.approx(float(expected.mean()), rel=1e-6)


def test_hsd_t_min_leaves_the_smallest_timesteps_out(photo_dir: Path, teacher_file: Path, tmp_path: Path) -> None:
    trainer = _trainer(photo_dir, teacher_file, tmp_path, "distill.hsd_t_min=1")
    assert trainer.score_loss is not None and trainer.score_loss.t_range == (1, 3)  # T = 4: the family's 3
    with pytest.raises(ValueError, match=r"distill.hsd_t_min=3: .*hsd_t_max is 3"):
        _trainer(photo_dir, teacher_file, tmp_path / "b", "distill.hsd_t_min=3")


def test_the_ema_warm_up_follows_k_diffusions_schedule_and_off_is_the_constant_rate() -> None:
    from tadsr.training.ema import EMA, ema_rate

    assert ema_rate(0.995, 0.0, 1) == 0.995  # off: today's constant rate
    assert ema_rate(0.995, 2 / 3, 1) == pytest.approx(1 - 2 ** (-2 / 3))  # 0.37: the first steps follow the network
    assert ema_rate(0.995, 2 / 3, 100) == pytest.approx(1 - 101 ** (-2 / 3))
    assert ema_rate(0.995, 2 / 3, 10**6) == 0.995  # capped at the rate
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, 0.995, warmup=2 / 3)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, 1)
    torch.testing.assert_close(ema.model.weight, start + (1 - ema_rate(0.995, 2 / 3, 1)))


def test_raw_weights_are_validated_and_written_beside_the_ema(photo_dir: Path, teacher_file: Path,
                                                              tmp_path: Path) -> None:
    """run.raw_weights: the raw network's validation figures beside the EMA's, and final-raw.safetensors; a resumed
    run is told when its hinge or EMA warm-up differs (never silently mixed)."""
    from tadsr.training.config import resumed_config

    trainer = _trainer(photo_dir, teacher_file, tmp_path, "run.steps=2", "run.raw_weights=true", "run.val_every=2",
                       "data.val_count=1", "distill.teacher_cache=4", "optim.ema_rate=0.9")
    trainer.run()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"val_psnr", "val_psnr_raw", "val_ssim_raw"} <= set(log[-1])
    ema, raw = (load_model(tmp_path / name) for name in ("final.safetensors", "final-raw.safetensors"))
    assert torch.equal(next(ema.unet.parameters()), next(trainer.ema.model.parameters()))
    assert torch.equal(next(raw.unet.parameters()), next(trainer.network.parameters()))
    assert not torch.equal(next(ema.unet.parameters()), next(raw.unet.parameters()))
    given = dataclasses.replace(trainer.config, distill=dataclasses.replace(trainer.config.distill, hinge="mean"),
                                optim=dataclasses.replace(trainer.config.optim, ema_warmup=0.75))
    _, ignored = resumed_config(trainer.config, given)
    assert ignored == ["optim.ema_warmup=0.75 (kept: 0.0)", "distill.hinge=mean (kept: per-logit)"]


def test_the_discriminator_t_grid_is_shared_by_the_batch_when_asked(photo_dir: Path, teacher_file: Path,
                                                                    tmp_path: Path) -> None:
    """TAD-SeeSR's draw: one t per batch from {dis_t_min, dis_t_min + dis_t_step, ...} below dis_t_max."""
    trainer = _trainer(photo_dir, teacher_file, tmp_path, "distill.dis_t_min=1", "distill.dis_t_max=3",
                       "distill.dis_t_step=2", "distill.dis_t_per_batch=true", "run.batch_size=4")  # T = 4
    seen: list[torch.Tensor] = []
    trainer.discriminator.register_forward_hook(lambda module, args, out: seen.append(args[1]))
    batches = trainer.batches()
    for _ in range(6):
        trainer.train_step(next(batches))
    draws = [t for t in seen if t.numel() == 8]  # the D steps' (real and fake), not the generator step's
    assert all(len(set(t.tolist())) == 1 for t in draws)
    assert {int(t[0]) for t in draws} == {1}  # the grid {1} below 3
    free = _trainer(photo_dir, teacher_file, tmp_path / "c", "run.batch_size=4")  # the default: a t per sample
    seen.clear()
    free.discriminator.register_forward_hook(lambda module, args, out: seen.append(args[1]))
    for _ in range(3):
        free.train_step(next(batches))
    assert any(len(set(t.tolist())) > 1 for t in seen if t.numel() == 8)
    with pytest.raises(ValueError, match="dis_t_min=3"):
        _trainer(photo_dir, teacher_file, tmp_path / "b", "distill.dis_t_min=3", "distill.dis_t_max=3")


def test_grad_clip_bounds_the_gradient_each_optimiser_steps_with(photo_dir: Path, teacher_file: Path,
                                                                tmp_path: Path) -> None:
    """``optim.grad_clip``: the student's and the discriminator's gradients reach their optimisers with a norm of
    at most the clip (measured at the step, after the backward)."""
    norms: dict[str, list[float]] = {"clipped": [], "free": []}
    for name, extra in (("clipped", ("optim.grad_clip=1e-3",)), ("free", ())):
        trainer = _trainer(photo_dir, teacher_file, tmp_path / name, *extra)
        for opt in (trainer.opt_g, trainer.opt_d):
            def measure(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict, name: str = name) -> None:
                grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                norms[name].append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            opt.register_step_pre_hook(measure)
        trainer.train_step(next(trainer.batches()))
    assert len(norms["clipped"]) == 2 and max(norms["clipped"]) <= 1e-3 * (1 + 1e-4)
    assert min(norms["free"]) > 1e-2  # without the clip the gradients are far larger
