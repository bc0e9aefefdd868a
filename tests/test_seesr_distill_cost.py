"""benchmarks/seesr_distill_cost.py's parameter counts of the full-size SeeSR networks (built on fake tensors, no
memory): the totals docs/seesr-benchmarks.md gives (UNet 1126.8 M, ControlNet 489.0 M, image cross-attention
385.7 M), each trainable subset of ``family.trainable``, and LoRA's r (in + out) against the stand-in's own
factors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


@pytest.mark.slow
def test_parameter_counts_of_the_full_size_networks() -> None:
    pytest.importorskip("diffusers")
    import seesr_distill_cost as cost
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        student = cost.SeeSRPair()
        unet, controlnet = cost.count([student.unet]), cost.count([student.controlnet])
        image = sum(cost.count([m]) for h in (student.unet_image, student.controlnet_image) for m in h.modules)
        assert (round(unet / 1e5), round(controlnet / 1e5), round(image / 1e5)) == (11268, 4890, 3857)
        assert cost.select_trainable(student, "full") == unet + controlnet
        cond = cost.count([student.controlnet.controlnet_cond_embedding])
        assert cost.select_trainable(student, "image-attention") == image + cond
        expected = cost.lora_parameters(student.unet, 8)
        cost.add_lora(student.unet, 8)
        assert cost.select_trainable(student, "lora") == expected
        assert cost.count([student.unet, student.controlnet]) == unet + controlnet + expected
