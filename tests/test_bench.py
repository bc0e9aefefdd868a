"""`tadsr bench` and the fast path's correctness: batched tiles equal one-by-one tiles, bench JSON is valid."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import randomize
from tadsr.bench import peak_memory_mib, reset_peak_memory
from tadsr.cli import main
from tadsr.config import ModelConfig
from tadsr.inference.backend import ModelBackend
from tadsr.inference.fast import prepare_for_inference
from tadsr.inference.pipeline import super_resolve
from tadsr.inference.tiling import tiled_super_resolve
from tadsr.model import SRModel, load_model


def test_tile_batching_gives_the_same_output(tiny_student_file: Path) -> None:
    model = load_model(tiny_student_file)
    lr = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(0)) * 2 - 1
    backend = ModelBackend(model, device="cpu")
    one = tiled_super_resolve(backend, lr, tile=32, overlap=8, batch_size=1)
    many = tiled_super_resolve(backend, lr, tile=32, overlap=8, batch_size=5)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-5)


def test_channels_last_gives_the_same_output(tiny_vq_model_config: ModelConfig,
                                             tiny_pixel_model_config: ModelConfig) -> None:
    lr = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for config in (tiny_vq_model_config, tiny_pixel_model_config):  # the VQ stage has an SDPA mid-block
        plain = randomize(SRModel(config), seed=5, std=0.05).eval()
        fast = prepare_for_inference(copy.deepcopy(plain), channels_last=True)
        conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        for steps in (1, config.schedule.num_steps):
            want = super_resolve(plain, lr, steps=steps, generator=torch.Generator().manual_seed(1))
            got = super_resolve(fast, lr, steps=steps, generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_peak_memory_is_reset_per_measurement() -> None:
    device = torch.device("cpu")
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    high = peak_memory_mib(device)
    del big
    reset_peak_memory(device)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs: the peak cannot be reset here")
    assert peak_memory_mib(device) < high - 32


@pytest.mark.slow
def test_bench_quick_writes_valid_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "--quick", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.stderr
    assert "| embedded | 32→128 | fp32 | 1 |" in result.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert {"device", "torch", "threads", "channels_last", "compile"} <= set(data["environment"])
    untiled = [r for r in data["rows"] if r["model"] == "embedded" and not r["tiles"]]
    assert len(untiled) == 1
    row = untiled[0]
    for key in ("U_s", "E_s", "D_s", "student_1_s", "teacher_15_s", "speedup", "ideal_speedup",
                "student_gflops_per_s", "efficiency_vs_realesrgan", "student_peak_mib", "teacher_peak_mib"):
        assert row[key] > 0, key
    assert row["ideal_speedup"] > 1
    # LR 64 runs tiled at --quick's tile 32 (overlap 8): 3 x 3 tiles, the first 2 timed, the rest estimated
    tiled = [r for r in data["rows"] if r["model"] == "embedded" and r["tiles"]]
    assert len(tiled) == 1
    assert (tiled[0]["lr"], tiled[0]["tiles"], tiled[0]["tiles_timed"], tiled[0]["estimated"]) == (64, 9, 2, True)
    assert tiled[0]["student_1_s"] > 0 and tiled[0]["student_peak_mib"] > 0


def test_bench_rejects_an_unknown_dtype() -> None:
    result = CliRunner().invoke(main, ["bench", "--dtypes", "fp8"])
    assert result.exit_code == 1
    assert "unknown dtype(s) fp8" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (compiling on CPU takes minutes)")
def test_compiled_model_gives_the_same_output(tiny_vq_model_config: ModelConfig) -> None:
    plain = randomize(SRModel(tiny_vq_model_config), seed=5, std=0.05).eval().cuda()
    fast = prepare_for_inference(copy.deepcopy(plain), channels_last=True, compile=True)
    lr = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1).cuda()
    want = super_resolve(plain, lr, steps=1, generator=torch.Generator().manual_seed(1))
    got = super_resolve(fast, lr, steps=1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
