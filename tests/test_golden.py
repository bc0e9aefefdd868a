"""Behaviour pinned by golden values (tests/golden/golden.py): the embedded models' outputs on a fixed LR crop and
the weights after a few training steps of the teacher and the distillation trainers, recorded before a refactor
and asserted equal after it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import golden  # noqa: E402


@pytest.fixture(scope="module")
def recorded() -> dict[str, torch.Tensor]:
    return load_file(str(golden.VALUES))


def _compare(recorded: dict[str, torch.Tensor], computed: dict[str, torch.Tensor], prefix: str) -> None:
    want = {k: v for k, v in recorded.items() if k.startswith(prefix)}
    assert want and set(computed) == set(want)
    for key, value in want.items():
        # float32 arithmetic in another order (another CPU's kernels) moves the last bits only
        torch.testing.assert_close(computed[key].to(value.dtype), value, rtol=1e-4, atol=1e-5, msg=key)


def test_embedded_models_upscale_the_fixed_crop_as_recorded(recorded: dict[str, torch.Tensor]) -> None:
    computed = golden.upscale_values()
    _compare(recorded, computed, "upscale.")
    assert computed["upscale.student"].shape == (1, 3, 96, 80)


def test_a_few_training_steps_give_the_recorded_weights(recorded: dict[str, torch.Tensor]) -> None:
    computed = golden.training_values()
    for prefix in ("teacher.", "distill."):
        _compare(recorded, {k: v for k, v in computed.items() if k.startswith(prefix)}, prefix)
