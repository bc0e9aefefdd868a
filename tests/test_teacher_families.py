"""The contract every teacher family passes (as diffusers' ``SchedulerCommonTest`` is every scheduler's): the teacher
process behind TAD-SR's losses and the family's parts around it, through the public interface
(``tadsr.training.families``). A new family adds its tiny teacher to ``TEACHERS``.

Then the distillation command's guarantees for the family: the settings both families share are honoured by each,
and a setting of the other family, a model override of a diffusers student, or a path that is no teacher, is one
line, exit 1, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tadsr.checkpoints import model_kind
from tadsr.cli import main
from tadsr.losses import ScoreDistillationLoss
from tadsr.training.families import DistillTeacher, distill_config, open_teacher

TEACHERS = ["resshift", "diffusers", "seesr"]
FOLDERS = {"diffusers": "pipeline_dir", "seesr": "seesr_teacher_dir"}  # the tiny teachers of conftest
OVERRIDES = {"seesr": ["family.teacher_steps=2"]}  # SeeSR's 50 sampler steps are not needed to test the contract


@pytest.fixture(params=TEACHERS)
def teacher_path(request: pytest.FixtureRequest, teacher_file: Path) -> Path:
    if request.param in FOLDERS:
        pytest.importorskip("diffusers")  # the test extra installs tadsr[sd]: this runs in CI
        return request.getfixturevalue(FOLDERS[request.param])
    return teacher_file


def _open(path: Path) -> DistillTeacher:
    config, _ = distill_config(path, preset="tiny", overrides=OVERRIDES.get(model_kind(path), []))
    return open_teacher(path, config.family, torch.device("cpu"))


def _pairs(teacher: DistillTeacher, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    side = teacher.gt_multiple  # the smallest GT crop the teacher takes
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, 3, side, side, generator=gen) * 2 - 1
    lq = torch.nn.functional.avg_pool2d(gt, teacher.scale)
    return lq, gt


def _batch(teacher: DistillTeacher, seed: int = 0) -> dict[str, torch.Tensor]:
    lq, gt = _pairs(teacher)
    return {"lq": lq, "gt": gt, **teacher.targets(lq, gt, torch.Generator().manual_seed(seed))}


def test_targets_are_drawn_from_the_generator_alone(teacher_path: Path) -> None:
    teacher = _open(teacher_path)
    first, again, other = _batch(teacher, 1), _batch(teacher, 1), _batch(teacher, 2)
    assert {"z_gt", "noise", "z_tch"} <= set(first)
    assert first["z_gt"].shape == first["noise"].shape == first["z_tch"].shape
    assert all(torch.equal(first[k], again[k]) for k in first)  # same seed, same bits
    assert not torch.equal(first["noise"], other["noise"]) and not torch.equal(first["z_tch"], other["z_tch"])
    assert torch.isfinite(first["z_tch"]).all()


def test_the_forward_process_and_its_noise_invert_each_other(teacher_path: Path) -> None:
    """z_t = q(z_0, t, eps) at a given eps; to_eps(z_t, z_0, t) gives that eps back, at every t."""
    teacher = _open(teacher_path)
    batch = _batch(teacher)
    cond, process = teacher.condition(batch), teacher.process
    z_0 = batch["z_gt"]
    eps = torch.randn(z_0.shape, generator=torch.Generator().manual_seed(3))
    for step in (0, process.num_timesteps // 2, process.num_timesteps - 1):
        t = torch.full((z_0.shape[0],), step)
        z_t = process.q_sample(z_0, t, eps, cond)
        assert torch.equal(z_t, process.q_sample(z_0, t, eps, cond))
        torch.testing.assert_close(process.to_eps(z_t, z_0, t, cond), eps, rtol=1e-3, atol=2e-3)
    x0 = process.x0_hat(z_t, t, cond)
    assert x0.shape == z_0.shape and torch.isfinite(x0).all()


def test_encoder_features_have_the_announced_channels_and_carry_the_graph(teacher_path: Path) -> None:
    teacher = _open(teacher_path)
    batch = _batch(teacher)
    z = batch["z_gt"].clone().requires_grad_(True)
    t = torch.zeros(z.shape[0], dtype=torch.long)
    features = teacher.process.encoder_features(z, t, teacher.condition(batch))
    assert [f.shape[1] for f in features] == list(teacher.feature_channels)
    assert teacher.model_channels == teacher.feature_channels[0]
    sum(f.sum() for f in features).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # the fake features reach the student


def test_hsd_is_zero_at_the_teacher(teacher_path: Path) -> None:
    teacher = _open(teacher_path)
    batch = _batch(teacher)
    hsd = ScoreDistillationLoss(teacher.process, "hsd", (0, teacher.default_hsd_t_max))
    z_tch = batch["z_tch"]
    assert torch.equal(hsd(z_tch, z_tch.clone(), teacher.condition(batch), torch.Generator().manual_seed(0)),
                       torch.zeros(z_tch.shape[0]))


def test_the_student_starts_as_the_teacher_and_learns_through_its_one_step(teacher_path: Path) -> None:
    teacher = _open(teacher_path)
    student = teacher.make_student()
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                 teacher.network.state_dict().values(), strict=True))
    assert any(p.requires_grad for p in student.parameters())  # all of them, or the family's subset
    assert not any(p.requires_grad for p in teacher.network.parameters())
    batch = _batch(teacher)
    cond = teacher.condition(batch)
    z_s = teacher.student_x0(student, batch, cond)
    assert z_s.shape == batch["z_gt"].shape
    assert torch.equal(z_s.detach(), teacher.student_x0(student, batch, cond).detach())  # no hidden draw
    z_s.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_the_student_file_opens_as_a_model_and_validation_upscales(teacher_path: Path, tmp_path: Path) -> None:
    teacher = _open(teacher_path)
    student = teacher.make_student().eval()
    lq, _ = _pairs(teacher)
    out = teacher.validate(student, lq)
    assert out.shape == (lq.shape[0], 3, lq.shape[2] * teacher.scale, lq.shape[3] * teacher.scale)
    assert out.min() >= -1 and out.max() <= 1
    path = tmp_path / f"student{teacher.student_suffix}"
    teacher.save_student(path, student)
    assert model_kind(path) == {"resshift": "tadsr", "diffusers": "sd-student", "seesr": "seesr"}[teacher.kind]
    identity = teacher.cache_identity()
    assert identity == _open(teacher_path).cache_identity() and json.dumps(identity)


# --- the command's guarantees, per family ---------------------------------------------------------------------


def _distill(teacher: Path, data: Path, out: Path, *overrides: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
                                       "--steps", "1", "-q", *overrides])
    return result.exit_code, [line for line in result.stderr.strip().splitlines() if "recipe" not in line
                              and "--preset" not in line]


def test_a_setting_of_the_other_family_is_one_line_before_any_work(teacher_file: Path, photo_dir: Path,
                                                                   tmp_path: Path) -> None:
    code, lines = _distill(teacher_file, photo_dir, tmp_path / "run", "family.prompt=a photo")
    assert code == 1 and len(lines) == 1, lines
    assert "family.prompt: a setting of the diffusers family" in lines[0] and "resshift" in lines[0]
    code, lines = _distill(teacher_file, photo_dir, tmp_path / "run", "sd.prompt=a photo")
    assert lines[0].startswith("tadsr: warning: ") and "sd.prompt is now family.prompt" in lines[0], lines
    assert code == 1 and "family.prompt: a setting of the diffusers family" in lines[-1]
    assert not (tmp_path / "run").exists()


def test_a_diffusers_student_refuses_model_and_resshift_settings(pipeline_dir: Path, photo_dir: Path,
                                                                 tmp_path: Path) -> None:
    for override, needle in (("model.unet.model_channels=96", "the teacher folder's architecture"),
                             ("family.double_scaling=true", "a setting of the resshift family")):
        code, lines = _distill(pipeline_dir, photo_dir, tmp_path / "run", override)
        assert code == 1 and len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_a_diffusers_teacher_honours_the_shared_settings_and_records_what_it_trains(pipeline_dir: Path,
                                                                                   photo_dir: Path,
                                                                                   tmp_path: Path) -> None:
    from tadsr.training.distill import DistillTrainer

    config, recipe = distill_config(pipeline_dir, data_path=str(photo_dir),
                                    overrides=["distill.hsd_t_max=7", "distill.dis_t_max=5", "data.gt_size=96"])
    assert recipe is not None and "tiny preset" in recipe
    trainer = DistillTrainer(config, tmp_path / "run", teacher=pipeline_dir, show_progress=False)
    assert trainer.score_loss is not None and trainer.score_loss.t_range == (0, 7) and trainer.dis_t_max == 5
    assert trainer.config.model is None and trainer.config.family.teacher_steps == 20
    default, _ = distill_config(pipeline_dir)
    assert DistillTrainer(default, tmp_path / "b", teacher=pipeline_dir, show_progress=False).hsd_t_max == 200


@pytest.mark.parametrize("kind", ["missing", "folder", "onnx"])
def test_a_teacher_path_that_is_no_teacher_is_one_line(photo_dir: Path, tmp_path: Path, kind: str) -> None:
    path = {"missing": tmp_path / "nothing.safetensors", "folder": tmp_path / "folder",
            "onnx": tmp_path / "model.onnx"}[kind]
    if kind == "folder":
        path.mkdir()
    if kind == "onnx":
        path.write_bytes(b"not a graph")
    code, lines = _distill(path, photo_dir, tmp_path / "run")
    needle = {"missing": "no such model file", "folder": "not a model folder",
              "onnx": "is not a teacher"}[kind]
    assert code == 1 and len(lines) == 1 and str(path) in lines[0] and needle in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_old_configs_migrate_to_their_family(tmp_path: Path) -> None:
    """tadsr 0.1 checkpoints kept an ``sd`` section and the ResShift quirks in ``distill``; a resumed run reads the
    family its settings describe."""
    from tadsr.training.config import DiffusersFamily, ResShiftFamily, config_from_dict, config_to_dict, train_config

    new = config_to_dict(train_config("tiny"))
    old = {k: v for k, v in new.items() if k != "family"}
    old["distill"] = {**new["distill"], "double_scaling": True, "unfrozen_teacher": False, "hsd_t_max": 3}
    old["sd"] = {"prompt": "", "noise_level": 20, "teacher_steps": 20, "student_t": -1, "hsd_t_max": 200,
                 "dis_t_max": 0}
    resshift = config_from_dict(old, warn_renamed=False)
    assert resshift.family == ResShiftFamily(double_scaling=True) and resshift.distill.hsd_t_max == 3
    old["sd"] = {**old["sd"], "teacher_steps": 2, "hsd_t_max": 50}
    diffusers = config_from_dict(old, warn_renamed=False)
    assert diffusers.family == DiffusersFamily(teacher_steps=2) and diffusers.model is None
    assert diffusers.distill.hsd_t_max == 50



def test_a_setting_of_the_other_command_is_one_line(teacher_file: Path, tmp_path: Path) -> None:
    """train-teacher reads no ``distill.*`` nor ``family.*``; distill no ``teacher.*``: never recorded unused."""
    runner = CliRunner()
    teacher = runner.invoke(main, ["train-teacher", "--out", str(tmp_path / "t"), "--dry-run", "distill.lambda_adv=1"])
    assert teacher.exit_code == 1 and "distill.lambda_adv: a setting of tadsr distill" in teacher.stderr
    student = runner.invoke(main, ["distill", "--teacher", str(teacher_file), "--out", str(tmp_path / "s"),
                                   "--dry-run", "teacher.t_last_prob=0.5"])
    assert student.exit_code == 1 and "teacher.t_last_prob: a setting of tadsr train-teacher" in student.stderr
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()
