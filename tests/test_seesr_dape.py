"""DAPE's image encoder (``tadsr.seesr.dape``): the LoRA merge, the checkpoint errors, the full DAPE size, the
shifted-window masks and window schedule of RAM's Swin (cswry/SeeSR 8edecc71, ``ram/models/swin_transformer_lora.py``).

Numbers marked "official" were read from the official module in the reference environment
(``scripts/seesr_parity_fixtures.py`` describes it: torch 2.14.1, timm, loralib 0.1.2), as noted at each.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tadsr.checkpoints import CheckpointError
from tadsr.errors import ConfigError
from tadsr.seesr.dape import (
    DAPE_SWIN_L,
    DapeImageEncoder,
    SwinConfig,
    SwinEncoder,
    drop_derived_buffers,
    merge_lora,
    relative_position_index,
    shifted_window_mask,
)

TINY = SwinConfig(img_size=32, patch_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4)


def _official_state(config: SwinConfig, seed: int = 0) -> dict[str, Tensor]:
    """A random state dict in the official layout: the merged module's keys plus qkv.lora_A / qkv.lora_B."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in SwinEncoder(config).state_dict().items()}
    parts, r = sum(config.lora_enable), config.lora_r
    for stage, dim in enumerate(config.stage_dims):
        for block in range(config.depths[stage]):
            name = f"layers.{stage}.blocks.{block}.attn.qkv"
            state[f"{name}.lora_A"] = torch.randn(r * parts, dim, generator=gen) * 0.5
            state[f"{name}.lora_B"] = torch.randn(dim * parts, r, generator=gen) * 0.5
    return state


def _loralib_unmerged(x: Tensor, weight: Tensor, bias: Tensor, lora_a: Tensor, lora_b: Tensor, enable: list[bool],
                      scaling: float) -> Tensor:
    """loralib 0.1.2 ``MergedLinear.forward`` in train mode (not merged), written out: x W^T + b plus
    ``x @ zero_pad(merge_AB()).T * scaling``, ``merge_AB`` being a grouped conv1d of A by B."""
    delta = F.conv1d(lora_a.unsqueeze(0), lora_b.unsqueeze(-1), groups=sum(enable)).squeeze(0)
    rows = torch.zeros(len(enable), weight.shape[0] // len(enable), dtype=torch.bool)
    rows[torch.tensor(enable)] = True
    padded = torch.zeros_like(weight)
    padded[rows.view(-1)] = delta
    return F.linear(x, weight, bias) + x @ padded.T * scaling


def test_merge_lora_matches_loralibs_unmerged_path() -> None:
    state = _official_state(TINY)
    before = {k: v.clone() for k, v in state.items()}
    merged = merge_lora(state, TINY)
    assert all(torch.equal(state[k], before[k]) for k in state)  # the input is not modified
    assert not any(k.endswith((".lora_A", ".lora_B")) for k in merged)
    assert set(merged) == set(SwinEncoder(TINY).state_dict())
    x = torch.randn(5, 7, 48)
    for stage, dim in enumerate(TINY.stage_dims):
        for block in range(TINY.depths[stage]):
            name = f"layers.{stage}.blocks.{block}.attn.qkv"
            w, b = state[f"{name}.weight"], state[f"{name}.bias"]
            new = merged[f"{name}.weight"]
            expected = _loralib_unmerged(x[..., :dim], w, b, state[f"{name}.lora_A"], state[f"{name}.lora_B"],
                                         [True, False, True], 0.125)
            assert (F.linear(x[..., :dim], new, b) - expected).abs().max().item() <= 1e-5
            assert torch.equal(new[dim:2 * dim], w[dim:2 * dim])  # k untouched
            assert not torch.equal(new[:dim], w[:dim]) and not torch.equal(new[2 * dim:], w[2 * dim:])
            assert torch.equal(merged[f"{name}.bias"], b)


def test_merge_lora_with_a_prefix_leaves_other_keys_alone() -> None:
    state = {f"visual_encoder.{k}": v for k, v in _official_state(TINY).items()}
    state["image_proj.weight"] = torch.randn(512, TINY.num_features)
    state["image_proj.bias"] = torch.randn(512)
    encoder = DapeImageEncoder.from_config(TINY)
    encoder.load_state_dict(merge_lora(state, TINY, prefix="visual_encoder."), strict=True)
    assert encoder(torch.randn(1, 3, 32, 32)).shape == (1, TINY.num_tokens, 512)


@pytest.mark.parametrize("key, change", [
    ("layers.1.blocks.0.attn.qkv.lora_A", "drop"),
    ("layers.0.blocks.1.attn.qkv.lora_B", "drop"),
    ("layers.0.blocks.1.attn.qkv.weight", "drop"),
    ("layers.1.blocks.1.attn.qkv.lora_A", "reshape"),
    ("layers.0.blocks.0.attn.qkv.lora_B", "reshape"),
    ("layers.1.blocks.0.attn.qkv.weight", "reshape"),
    ("layers.1.blocks.2.attn.qkv.lora_A", "add"),
])
def test_merge_lora_names_a_missing_misshaped_or_stray_key(key: str, change: str) -> None:
    state = _official_state(TINY)
    if change == "drop":
        del state[key]
    elif change == "reshape":
        state[key] = state[key][:-1]
    else:
        state[key] = torch.zeros(16, 48)
    with pytest.raises(CheckpointError) as err:
        merge_lora(state, TINY)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_dape_swin_l_has_the_official_parameter_count() -> None:
    # Official: SwinTransformer(img_size=384, patch_size=4, embed_dim=192, depths=[2, 2, 18, 2],
    # num_heads=[6, 12, 24, 48], window_size=12, ...) as ram_lora.RAMLora(vit='swin_l') builds it, counted in the
    # reference venv (on the CPU: the official __init__ calls .item() on torch.linspace, which the meta device
    # refuses): 195,776,052 parameters in 375 tensors, of which 577,536 in the 48 qkv.lora_A / qkv.lora_B tensors.
    # The merged module has the rest.
    official_total, official_lora = 195_776_052, 577_536
    with torch.device("meta"):
        swin = SwinEncoder(DAPE_SWIN_L)
        encoder = DapeImageEncoder.from_config(DAPE_SWIN_L)
    assert sum(p.numel() for p in swin.parameters()) == official_total - official_lora == 195_198_516
    assert len(swin.state_dict()) == len(list(swin.parameters())) == 375 - 48  # no buffers saved
    blocks_width = sum(d * c for d, c in zip(DAPE_SWIN_L.depths, DAPE_SWIN_L.stage_dims, strict=True))
    assert official_lora == blocks_width * 4 * DAPE_SWIN_L.lora_r  # A (2r, C) + B (2C, r) per block
    assert DAPE_SWIN_L.num_features == encoder.image_proj.in_features == 1536
    assert sum(p.numel() for p in encoder.parameters()) == 195_198_516 + 1536 * 512 + 512
    assert DAPE_SWIN_L.num_tokens == 145


def test_dape_window_schedule_is_the_officials() -> None:
    # Official (reference venv): token grids 96/48/24/12, window 12 everywhere, shift 6 in the odd blocks of stages
    # 1-3, none in stage 4, where the grid is no larger than the window (SwinTransformerBlock.__init__); masks
    # (64|16|4, 144, 144). Nothing is padded: 96, 48, 24 and 12 are multiples of 12.
    config = DAPE_SWIN_L
    assert config.stage_grids == (96, 48, 24, 12) and config.stage_windows == (12, 12, 12, 12)
    assert [[config.shift(s, b) for b in range(d)] for s, d in enumerate(config.depths)] == [
        [0, 6], [0, 6], [0, 6] * 9, [0, 0]]
    with torch.device("meta"):
        swin = SwinEncoder(config)
    masks = [[None if blk.attn_mask is None else tuple(blk.attn_mask.shape) for blk in layer.blocks]
             for layer in swin.layers]
    assert masks == [[None, (64, 144, 144)], [None, (16, 144, 144)], [None, (4, 144, 144)] * 9, [None, None]]
    # Official masked-pair counts (attn_mask != 0) of those masks; every value is 0 or -100.
    assert (shifted_window_mask(96, 12, 6) != 0).sum().item() == 160_704
    assert (shifted_window_mask(48, 12, 6) != 0).sum().item() == 77_760
    assert (shifted_window_mask(24, 12, 6) != 0).sum(dim=(1, 2)).tolist() == [0, 10_368, 10_368, 15_552]
    assert set(shifted_window_mask(24, 12, 6).unique().tolist()) == {0.0, -100.0}


def test_shifted_window_mask_by_hand() -> None:
    # Grid 8, window 4, shift 2 (the parity fixture's stage 1): the top-left window is one region; the top-right
    # and bottom-left ones hold two regions of 8 tokens (split at column / row 2); the bottom-right one four of 4.
    mask = shifted_window_mask(8, 4, 2)
    rows, cols = torch.arange(16) // 4, torch.arange(16) % 4
    for window, label in enumerate([torch.zeros(16), cols >= 2, rows >= 2, (rows >= 2) * 2 + (cols >= 2)]):
        label = label.long()
        expected = torch.where(label[:, None] == label[None, :], 0.0, -100.0)
        assert torch.equal(mask[window], expected), window
    # Official counts per window (reference venv) for these and for a 3x3-window grid.
    assert (mask != 0).sum(dim=(1, 2)).tolist() == [0, 128, 128, 192]
    assert (shifted_window_mask(12, 4, 2) != 0).sum(dim=(1, 2)).tolist() == [0, 0, 128, 0, 0, 128, 128, 128, 192]


def test_relative_position_index_layout() -> None:
    index = relative_position_index(3)
    assert index.shape == (9, 9) and index.dtype == torch.long
    assert index.diagonal().unique().tolist() == [(3 - 1) * 5 + (3 - 1)]  # dh = dw = 0: the table's centre
    assert index[0, 8].item() == 0 and index[8, 0].item() == 24  # (0,0)->(2,2): dh = dw = -2; reverse +2
    assert index[0, 1].item() == 2 * 5 + 1  # dh = 0, dw = -1


def test_grid_smaller_than_the_window_shrinks_it_and_drops_the_shift() -> None:
    # Official: SwinTransformerBlock(input_resolution=(6, 6), window_size=12, shift_size=6) has window 6, shift 0,
    # attn_mask None (reference venv).
    config = SwinConfig(img_size=32, patch_size=4, embed_dim=8, depths=(2, 2), num_heads=(2, 2), window_size=12)
    assert config.stage_grids == (8, 4) and config.stage_windows == (8, 4)
    assert [config.shift(s, 1) for s in range(2)] == [0, 0]
    swin = SwinEncoder(config).eval()
    assert all(blk.attn_mask is None for layer in swin.layers for blk in layer.blocks)
    assert swin.layers[0].blocks[0].attn.relative_position_bias_table.shape == (15 * 15, 2)
    with torch.no_grad():
        assert swin(torch.randn(2, 3, 32, 32)).shape == (2, 1 + 16, 16)


@pytest.mark.parametrize("img_size, window, what", [(40, 4, "multiple of its window"), (24, 4, "multiple"),
                                                    (36, 3, "odd")])
def test_grids_the_official_cannot_window_are_refused(img_size: int, window: int, what: str) -> None:
    # The official Swin does not pad: SwinTransformer(img_size=40 or 24, patch_size=4, window_size=4, depths=[2, 2])
    # fails in its constructor ("shape '[1, 2, 4, 2, 4, 1]' is invalid for input of size 100"), and PatchMerging
    # asserts an even grid. Here the config says so in one line.
    with pytest.raises(ConfigError, match=what) as err:
        SwinConfig(img_size=img_size, patch_size=4, embed_dim=8, depths=(2, 2), num_heads=(2, 2), window_size=window)
    assert "\n" not in str(err.value)


def test_config_from_the_official_arguments() -> None:
    values = {"img_size": 32, "patch_size": 4, "in_chans": 3, "embed_dim": 24, "depths": [2, 2], "num_heads": [2, 4],
              "window_size": 4, "mlp_ratio": 4.0, "qkv_bias": True, "drop_path_rate": 0.1, "lora_r": 8,
              "lora_alpha": 1, "lora_enable": [True, False, True], "class": "ignored"}
    assert SwinConfig.from_dict(values) == TINY
    assert SwinConfig.from_dict({**values, "lora_scaling": 0.125}) == TINY
    with pytest.raises(ConfigError, match="lora_scaling"):
        SwinConfig.from_dict({**values, "lora_scaling": 1.0})
    with pytest.raises(ConfigError, match="num_heads"):
        SwinConfig(embed_dim=10, num_heads=(3, 6, 12, 24))


def test_derived_buffers_are_recomputed_not_loaded() -> None:
    state = merge_lora(_official_state(TINY), TINY)
    fresh = SwinEncoder(TINY)
    with pytest.raises(RuntimeError, match="attn_mask"):  # a state that still holds them does not load strictly
        fresh.load_state_dict({**state, "layers.0.blocks.1.attn_mask": fresh.layers[0].blocks[1].attn_mask})
    with_buffers = {**state, "layers.0.blocks.1.attn_mask": torch.zeros(1),
                    "layers.0.blocks.0.attn.relative_position_index": torch.zeros(1)}
    assert drop_derived_buffers(with_buffers).keys() == state.keys()
    with torch.device("meta"):
        empty = SwinEncoder(TINY)
    empty = empty.to_empty(device="cpu")
    empty.reset_derived_buffers()
    empty.load_state_dict(state, strict=True)
    fresh.load_state_dict(state, strict=True)
    for (name, a), (_, b) in zip(empty.named_buffers(), fresh.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(empty.eval()(x), fresh.eval()(x))


def test_wrong_input_size_and_mismatched_projection_are_refused() -> None:
    swin = SwinEncoder(TINY)
    with pytest.raises(ValueError, match="32, 32"):
        swin(torch.randn(1, 3, 36, 36))
    with pytest.raises(ConfigError, match="image_proj"):
        DapeImageEncoder(swin, nn.Linear(24, 512))
