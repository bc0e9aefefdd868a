"""Parity with the official SeeSR modules (issue 33): tadsr's networks against outputs the official code wrote.

The fixtures are read from the folder named by ``TADSR_SEESR_FIXTURES`` (default: ``tests/data/seesr_parity``,
written by ``scripts/seesr_parity_fixtures.py`` from cswry/SeeSR with diffusers 0.21; its README says how). Every
size is taken from the fixtures' configs, so a folder of other sizes in the same format is checked the same way.
Tolerance: max |difference| <= 1e-5.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(os.environ.get("TADSR_SEESR_FIXTURES", Path(__file__).parent / "data" / "seesr_parity"))
TOLERANCE = 1e-5


def _io() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(FIXTURES / "io.safetensors").items()}  # clone: aligned memory


def test_the_controlnet_and_unet_give_the_official_outputs() -> None:
    pytest.importorskip("diffusers")  # tadsr[sd]; CI installs it, so this runs there
    from tadsr.seesr.nets import load_network

    controlnet, control_image = load_network(FIXTURES / "release" / "controlnet", "controlnet")
    unet, unet_image = load_network(FIXTURES / "release" / "unet", "unet")
    io = _io()
    with torch.no_grad(), control_image.attending(io["img"]), unet_image.attending(io["img"]):
        down, mid = controlnet(io["x"], io["t"], encoder_hidden_states=io["txt"], controlnet_cond=io["cond"],
                               conditioning_scale=1.0, return_dict=False)
        eps = unet(io["x"], io["t"], encoder_hidden_states=io["txt"], down_block_additional_residuals=list(down),
                   mid_block_additional_residual=mid, return_dict=False)[0]
    expected = sorted((k for k in io if k.startswith("down")), key=lambda k: int(k[4:]))
    assert len(down) == len(expected)
    for name, value in [*zip(expected, down, strict=True), ("mid", mid), ("eps", eps)]:
        assert value.shape == io[name].shape, name
        assert (value - io[name]).abs().max().item() <= TOLERANCE, name


def test_dapes_swin_gives_the_official_tokens() -> None:
    """RAM's LoRA Swin (DAPE's image encoder): the official train-mode state, LoRA merged by ``merge_lora``, loads
    strictly into ``SwinEncoder`` and gives the official eval-mode tokens (avgpool token, then the patch tokens)."""
    import json

    from tadsr.seesr.dape import SwinConfig, SwinEncoder, merge_lora

    folder = FIXTURES / "swin"
    config = SwinConfig.from_dict(json.loads((folder / "config.json").read_text()))
    state = {k: v.clone() for k, v in load_file(folder / "state.safetensors").items()}  # clone: aligned memory
    io = {k: v.clone() for k, v in load_file(folder / "io.safetensors").items()}
    swin = SwinEncoder(config).eval()
    swin.load_state_dict(merge_lora(state, config), strict=True)
    with torch.no_grad():
        y = swin(io["x"])
    assert y.shape == io["y"].shape == (io["x"].shape[0], config.num_tokens, config.num_features)
    assert (y - io["y"]).abs().max().item() <= TOLERANCE
