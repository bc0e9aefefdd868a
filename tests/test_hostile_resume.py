"""Resume from anywhere: no checkpoint yet, a corrupt latest one, stale temporary files, non-finite weights, a
corrupt teacher cache (issue class 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tadsr.training.trainer import TrainingError
from test_training import _cli, _distill_args, _prepare, _trainer


@pytest.mark.slow
def test_resume_without_a_checkpoint_starts_at_step_0_with_a_notice(photo_dir: Path, teacher_file: Path,
                                                                    tmp_path: Path) -> None:
    result = _cli(*_distill_args(photo_dir, teacher_file, tmp_path / "run", 2), "--resume")
    assert result.returncode == 0, result.stderr
    assert "no checkpoint yet; starting at step 0" in result.stderr
    assert (tmp_path / "run" / "final.safetensors").is_file()


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(photo_dir: Path, teacher_file: Path,
                                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    _prepare(*_distill_args(photo_dir, teacher_file, run, 4))
    latest = run / "checkpoints" / "step_00000004.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    stale = run / "checkpoints" / ".step_00000006.pt.abcd1234.tmp"  # what a kill during a write leaves
    stale.write_bytes(b"half")
    mine = run / "notes.tmp"  # not our pattern: kept
    mine.write_text("x")
    result = _cli(*_distill_args(photo_dir, teacher_file, run, 6), "--resume")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if line.startswith("tadsr: warning:")]
    assert any("step_00000004.pt: not a readable training checkpoint" in w and "resuming from step_00000002.pt" in w
               for w in warned)
    assert any(".step_00000006.pt.abcd1234.tmp: removed a temporary file" in w for w in warned)
    assert not stale.exists() and mine.exists()
    assert (run / "checkpoints" / "step_00000006.pt").is_file()


def test_non_finite_weights_are_never_kept_as_a_checkpoint(photo_dir: Path, teacher_file: Path,
                                                           tmp_path: Path) -> None:
    trainer = _trainer(photo_dir, teacher_file, tmp_path)
    with torch.no_grad():
        next(trainer.network.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingError, match="step 0: the weights are not finite .*not saved; stopped, no "
                                            "checkpoint was written yet"):
        trainer.save()
    assert not (tmp_path / "checkpoints").exists()


def test_a_corrupt_teacher_cache_is_rebuilt_with_a_warning(photo_dir: Path, teacher_file: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    trainer = _trainer(photo_dir, teacher_file, tmp_path, "distill.teacher_cache=4")
    (tmp_path / "teacher_cache.pt").write_bytes(b"PK\x03\x04 not a zip at all")
    batch = next(trainer.batches())
    assert "teacher_cache.pt: not a readable teacher cache" in capsys.readouterr().err
    assert batch["z_tch"].shape[0] == trainer.config.run.batch_size
    assert isinstance(torch.load(tmp_path / "teacher_cache.pt", weights_only=True), dict)  # rebuilt, valid
