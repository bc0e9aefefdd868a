"""torchrun (gloo, CPU): a stop on one rank stops all; a run resumes under another number of processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import torchrun
from test_training import _cli, _distill_args, _prepare


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_its_message(photo_dir: Path, teacher_file: Path,
                                                                         tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(  # rank 1's distillation loss turns NaN at its first step
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import torch\n"
        "    from tadsr.losses import distillation\n"
        "    distillation.DistillationLoss.__call__ = lambda self, a, b: torch.full(a.shape[:1], float('nan'))\n")
    result = torchrun(2, *_distill_args(photo_dir, teacher_file, tmp_path / "run", 3),
                       env={"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert result.returncode != 0
    stopped = [line for line in result.stderr.splitlines() if "loss term 'distill' is not finite" in line]
    assert len(stopped) == 2 and all("on one rank; stopped" in line for line in stopped), result.stderr[-2000:]
    assert not (tmp_path / "run" / "final.safetensors").exists()


@pytest.mark.slow
def test_a_run_resumes_under_another_number_of_processes(photo_dir: Path, teacher_file: Path,
                                                         tmp_path: Path) -> None:
    one = tmp_path / "one"  # 1 process, then 2
    _prepare(*_distill_args(photo_dir, teacher_file, one, 2))
    result = torchrun(2, *_distill_args(photo_dir, teacher_file, one, 4), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming a 1-process run with 2" in result.stderr
    two = tmp_path / "two"  # 2 processes, then 1
    assert torchrun(2, *_distill_args(photo_dir, teacher_file, two, 2)).returncode == 0
    result = _cli(*_distill_args(photo_dir, teacher_file, two, 4), "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming a 2-process run with 1" in result.stderr
    for run in (one, two):
        steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
                 if "distill" in line]
        assert steps == [1, 2, 3, 4] and (run / "final.safetensors").is_file()


@pytest.mark.slow
def test_sharded_upscale_equals_one_process_and_resumes(tmp_path: Path, tiny_student_file: Path) -> None:
    import numpy as np
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            src / f"p{i}.png")
    (src / "broken.png").write_bytes(b"not an image")
    args = ["upscale", "-i", str(src), "--model", str(tiny_student_file), "-q"]
    one = _cli(*args, "-o", str(tmp_path / "one"))
    assert one.returncode == 1 and "5 done, 0 skipped, 1 failed" in one.stdout
    two = torchrun(2, *args, "-o", str(tmp_path / "two"))
    assert two.returncode == 1  # one rank's failure makes the job fail
    assert two.stdout.count("tadsr: ") == 1 and "5 done, 0 skipped, 1 failed" in two.stdout
    assert "(2 processes)" in two.stdout and two.stderr.count("broken.png") == 1
    for i in range(5):  # the noise is per image: the split does not change a bit
        assert (tmp_path / "one" / f"p{i}.png").read_bytes() == (tmp_path / "two" / f"p{i}.png").read_bytes()
    (tmp_path / "two" / "p3.png").unlink()  # as if the job had been killed before p3
    again = torchrun(2, *args, "-o", str(tmp_path / "two"))
    assert "1 done, 4 skipped, 1 failed" in again.stdout
    assert (tmp_path / "one" / "p3.png").read_bytes() == (tmp_path / "two" / "p3.png").read_bytes()


@pytest.mark.slow
def test_sharded_evaluate_reports_what_one_process_reports(tmp_path: Path, tiny_student_file: Path) -> None:
    import csv

    import numpy as np
    from PIL import Image

    lr, gt = tmp_path / "lr", tmp_path / "gt"
    lr.mkdir()
    gt.mkdir()
    for i in range(5):
        hr = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(hr).save(gt / f"p{i}.png")
        Image.fromarray(hr).resize((16, 16), Image.BICUBIC).save(lr / f"p{i}.png")
    (lr / "p5.png").write_bytes(b"broken")
    Image.new("RGB", (64, 64)).save(gt / "p5.png")
    args = ["evaluate", "--lr", str(lr), "--gt", str(gt), "--models", f"bicubic,{tiny_student_file}:1", "-q"]
    one = _cli(*args, "-o", str(tmp_path / "one"))
    two = torchrun(2, *args, "-o", str(tmp_path / "two"))
    assert one.returncode == two.returncode == 1  # p5 is left out, by both
    assert "1 of 6 pair(s) left out (each named above)" in two.stderr  # from rank 0, after writing the report
    rows = [list(csv.reader(open(tmp_path / run / "per_image.csv"))) for run in ("one", "two")]
    assert rows[0] == rows[1] and len(rows[0]) == 1 + 2 * 5
    assert (tmp_path / "two" / "sheet.png").is_file()


def test_similar_names_use_every_rank_and_the_split_is_balanced(tmp_path: Path) -> None:
    """crc32(name) mod world sent im0..im6 (some in a sub-folder) all to rank 0 of 2; ``assign`` must not."""
    from PIL import Image

    from tadsr.distributed import assign
    from tadsr.inference.batch import Job, shard

    names = [f"im{i}.png" for i in range(4)] + [f"sub/im{i}.png" for i in range(4, 7)]
    for world in (2, 3, 7):
        ranks = assign(names, world)
        assert set(ranks) == set(range(world)) and max(map(ranks.count, range(world))) - min(
            map(ranks.count, range(world))) <= 1
        assert assign(list(reversed(names)), world) == list(reversed(ranks))  # by key, not by list order
    assert assign(names, 1) == [0] * 7
    assert assign(["a", "b", "a"], 2) == [0, 1, 0]  # one key, one rank (a clash is reported where it meets)
    # with sizes: largest first to the least loaded rank
    assert assign(["a", "b", "c", "d"], 2, [100, 10, 60, 50]) == [0, 0, 1, 1]  # a, b | c, d: 110 each
    jobs = []
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8 + 8 * i, 8)).save(tmp_path / name)
        jobs.append(Job(tmp_path / name, tmp_path / "out" / name))
    jobs.append(Job(tmp_path / "missing.png", tmp_path / "out" / "missing.png"))  # unreadable: size 1
    parts = [shard(jobs, r, 2) for r in range(2)]
    assert all(parts) and sorted(j.target for p in parts for j in p) == sorted(j.target for j in jobs)
    pixels = [sum((8 + 8 * names.index(j.source.relative_to(tmp_path).as_posix())) * 8 if j.source.exists() else 1
                  for j in p) for p in parts]
    assert abs(pixels[0] - pixels[1]) <= 64 * 8
    assert shard(jobs, 0, 1) == jobs
