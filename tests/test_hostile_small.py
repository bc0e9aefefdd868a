"""Small guarantees (issue class 7): files get the user's umask, an empty array is a ValueError, a non-finite
teacher output reaches the trainer's finite check instead of being zeroed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import tadsr
from tadsr.backends import open_model
from tadsr.diffusion.denoiser import ResShiftDenoiser
from tadsr.diffusion.process import ResShiftCondition, ResShiftProcess
from tadsr.diffusion.schedule import Schedule, ScheduleConfig
from tadsr.losses import ScoreDistillationLoss
from tadsr.model import load_model, save_model


def test_model_files_are_written_with_the_users_umask(tmp_path: Path, tiny_student_file: Path) -> None:
    old = os.umask(0o022)
    try:
        save_model(load_model(tiny_student_file), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 5), (3, 2, 3)])
def test_upscale_of_an_empty_or_tiny_array_is_a_value_error(tiny_student_file: Path, shape: tuple[int, ...]) -> None:
    up = tadsr.Upscaler(open_model(tiny_student_file, device="cpu"))
    with pytest.raises(ValueError, match="at least 4x4 pixels"):
        up.upscale(np.zeros(shape, np.uint8))


def test_a_non_finite_teacher_output_is_not_hidden_by_the_score_loss() -> None:
    schedule = Schedule(ScheduleConfig(num_steps=15))
    z = torch.zeros(1, 3, 4, 4)
    broken = ResShiftDenoiser(lambda x, t, lq: torch.full_like(x, float("nan")), schedule)
    process = ResShiftProcess(schedule, broken)
    loss = ScoreDistillationLoss(process, "hsd")(z, z + 1, ResShiftCondition(z, z), torch.Generator().manual_seed(0))
    assert not torch.isfinite(loss).any()


def test_an_out_of_range_seed_is_a_usage_error_and_bench_checks_its_json_path_first(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tadsr.cli import main

    result = CliRunner().invoke(main, ["upscale", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--seed", "-1"])
    assert result.exit_code == 2 and "--seed" in result.stderr
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["bench", "--quick", "--json", str(tmp_path / "file" / "b.json")])
    assert result.exit_code == 1 and "output folder is not writable" in result.stderr
    assert "tadsr: bench:" not in result.stderr  # nothing was measured first
