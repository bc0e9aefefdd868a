"""`tadsr bench` and the fast path's correctness: batched tiles equal one-by-one tiles, bench JSON is valid."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from tadsr.cli import main
from tadsr.inference.tiling import tiled_super_resolve
from tadsr.model import load_model


def test_tile_batching_gives_the_same_output(tiny_student_file: Path) -> None:
    model = load_model(tiny_student_file)
    lr = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(0)) * 2 - 1
    one = tiled_super_resolve(model, lr, tile=32, overlap=8, batch_size=1)
    many = tiled_super_resolve(model, lr, tile=32, overlap=8, batch_size=5)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-5)


def test_bench_quick_writes_valid_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "--quick", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert {"device", "torch", "threads"} <= set(data["environment"])
    model_rows = [r for r in data["rows"] if r["model"] == "embedded"]
    assert len(model_rows) == 1
    row = model_rows[0]
    for key in ("U_s", "E_s", "D_s", "student_1_s", "teacher_15_s", "speedup", "ideal_speedup",
                "student_gflops_per_s", "efficiency_vs_realesrgan"):
        assert row[key] > 0, key
    assert row["ideal_speedup"] > 1
