"""Swin-UNet: official layout and parameter counts, the official shift mask, tiny forwards at two sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import TINY_UNET, randomize
from tadsr import presets
from tadsr.diffusion.schedule import ScheduleConfig
from tadsr.nets.common import timestep_embedding
from tadsr.nets.swin import SwinBlock, SwinLayer, shifted_window_mask, window_partition, window_reverse
from tadsr.nets.unet import SwinUNet, UNetConfig


def _meta(build, name):  # noqa: ANN001, ANN202
    with torch.device("meta"):
        return build(name)


@pytest.mark.parametrize(("build", "name", "params"), [
    (presets.build_unet, "realsr-x4", 118_593_583),
    (presets.build_unet, "faceir", 118_931_604),
    (presets.build_autoencoder, "vq-f4", 55_322_782),
    (presets.build_autoencoder, "vq-f8-face", 77_009_115),
])
def test_preset_parameter_counts(build, name: str, params: int) -> None:  # noqa: ANN001
    model = _meta(build, name)
    assert sum(p.numel() for p in model.parameters()) == params


def test_realsr_state_dict_has_the_official_layout() -> None:
    sd = _meta(presets.build_unet, "realsr-x4").state_dict()
    assert len(sd) == 564
    buffers = [k for k in sd if k.endswith(("relative_position_index", "attn_mask"))]
    assert len(buffers) == 24
    masks = {k: tuple(v.shape) for k, v in sd.items() if k.endswith("attn_mask")}
    assert sorted(masks.values()) == sorted([(64, 64, 64), (64, 64, 64), (16, 64, 64), (16, 64, 64),
                                             (4, 64, 64), (4, 64, 64)])
    assert all(".blocks.1." in k for k in masks)
    for key, shape in {
        "time_embed.0.weight": (640, 160), "time_embed.2.weight": (640, 640),
        "input_blocks.0.0.weight": (160, 6, 3, 3), "input_blocks.3.0.op.weight": (160, 160, 3, 3),
        "input_blocks.1.1.patch_embed.proj.weight": (192, 160, 1, 1),
        "input_blocks.1.1.blocks.0.attn.qkv.weight": (576, 192),
        "input_blocks.1.1.blocks.0.attn.relative_position_bias_table": (225, 6),
        "input_blocks.1.1.blocks.0.attn.relative_position_index": (64, 64),
        "input_blocks.1.1.blocks.1.mlp.fc1.weight": (768, 192, 1, 1),
        "input_blocks.4.0.skip_connection.weight": (320, 160, 1, 1),
        "input_blocks.4.0.emb_layers.1.weight": (640, 640),
        "middle_block.1.patch_unembed.proj.weight": (640, 192, 1, 1),
        "output_blocks.2.1.conv.weight": (640, 640, 3, 3), "output_blocks.8.1.conv.weight": (320, 320, 3, 3),
        "out.0.weight": (160,), "out.2.weight": (3, 160, 3, 3),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    assert "input_blocks.2.1.patch_embed.proj.weight" not in sd  # Swin only after a level's first ResBlock


def test_face_unet_has_the_lq_feature_extractor() -> None:
    sd = _meta(presets.build_unet, "faceir").state_dict()
    extractor = sorted({k.split(".")[1] for k in sd if k.startswith("feature_extractor.")})
    assert extractor == ["0", "2", "3", "5", "6", "8"]
    assert tuple(sd["feature_extractor.2.op.weight"].shape) == (32, 16, 3, 3)
    assert tuple(sd["input_blocks.0.0.weight"].shape) == (160, 136, 3, 3)


def _official_mask_procedure(h: int, w: int, win: int, shift: int) -> np.ndarray:
    """The official construction as described in docs/implementation-notes.md §3.1b, step by step: a region map
    filled along H only, partitioned into windows, and read back with rows and columns swapped."""
    img = np.zeros((h, w))
    for cnt, sl in enumerate((slice(0, -win), slice(-win, -shift), slice(-shift, None))):
        img[sl, :] = cnt
    windows = img.reshape(h // win, win, w // win, win).transpose(0, 2, 1, 3).reshape(-1, win, win)
    flat = windows.transpose(0, 2, 1).reshape(-1, win * win)  # column-major read of each window
    diff = flat[:, None, :] - flat[:, :, None]
    return np.where(diff != 0, -100.0, 0.0)


@pytest.mark.parametrize("size", [(16, 16), (64, 64), (32, 64), (128, 128)])
def test_shift_mask_is_the_official_one(size: tuple[int, int]) -> None:
    h, w = size
    mask = shifted_window_mask(h, w, 8, 4)
    np.testing.assert_array_equal(mask.numpy(), _official_mask_procedure(h, w, 8, 4))
    n_cols = w // 8
    assert not mask[: -n_cols].any()  # only the bottom row of windows is masked
    bottom = mask[-1]
    cols = torch.arange(64) % 8
    assert torch.equal(bottom != 0, (cols[:, None] < 4) != (cols[None, :] < 4))


def test_window_partition_round_trip() -> None:
    x = torch.randn(2, 5, 16, 24)
    windows = window_partition(x, 8)
    assert windows.shape == (2 * 6, 64, 5)
    assert torch.equal(windows[1, 9], x[0, :, 1, 8 + 1])  # window (0, 1), token (r=1, c=1)
    assert torch.equal(window_reverse(windows, 8, 16, 24), x)


def _naive_block(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """Explicit softmax attention, one window at a time, with the relative bias and the official mask."""
    b, c, h, w = x.shape
    win, shift, heads = block.window, block.shift, block.attn.num_heads
    y = torch.roll(block.norm1(x), (-shift, -shift), (2, 3))
    out = torch.zeros_like(y)
    table = block.attn.relative_position_bias_table
    bias = table[block.attn.relative_position_index.view(-1)].view(win * win, win * win, heads).permute(2, 0, 1)
    mask = shifted_window_mask(h, w, win, shift) if shift else torch.zeros(1, win * win, win * win)
    for n in range(b):
        for i in range(h // win):
            for j in range(w // win):
                tok = y[n, :, i * win:(i + 1) * win, j * win:(j + 1) * win].reshape(c, -1).t()  # (N, C)
                q, k, v = block.attn.qkv(tok).view(-1, 3, heads, c // heads).permute(1, 2, 0, 3)
                logits = q @ k.transpose(-1, -2) / math.sqrt(c // heads) + bias
                logits = logits + mask[i * (w // win) + j if shift else 0]
                att = (logits.softmax(-1) @ v).transpose(0, 1).reshape(-1, c)
                out[n, :, i * win:(i + 1) * win, j * win:(j + 1) * win] = block.attn.proj(att).t().view(c, win, win)
    x = x + torch.roll(out, (shift, shift), (2, 3))
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift", [0, 4])
def test_swin_block_equals_naive_window_attention(shift: int) -> None:
    torch.manual_seed(0)
    block = randomize(SwinBlock(32, resolution=16, num_heads=2, window=8, shift=shift, mlp_ratio=2.0), std=0.2)
    x = torch.randn(2, 32, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _naive_block(block, x), atol=1e-5, rtol=1e-5)


def test_swin_layer_has_no_outer_residual() -> None:
    layer = SwinLayer(32, 32, 2, 8, 2, 16, 2.0)
    torch.nn.init.zeros_(layer.patch_unembed.proj.weight)
    torch.nn.init.zeros_(layer.patch_unembed.proj.bias)
    assert torch.equal(layer(torch.randn(1, 32, 16, 16)), torch.zeros(1, 32, 16, 16))


def test_deepest_level_is_built_unshifted_with_the_level_as_window() -> None:
    unet = SwinUNet(TINY_UNET)
    deep = unet.middle_block[1].blocks[1]
    assert (deep.window, deep.shift, deep.attn_mask) == (8, 0, None)
    top = unet.input_blocks[1][1].blocks[1]
    assert (top.window, top.shift) == (8, 4)


def test_timestep_embedding_is_cos_then_sin() -> None:
    t = torch.tensor([0, 3, 14])
    emb = timestep_embedding(t, 160)
    freqs = torch.exp(-math.log(10000) * torch.arange(80) / 80)
    torch.testing.assert_close(emb[:, :80], torch.cos(t[:, None] * freqs))
    torch.testing.assert_close(emb[:, 80:], torch.sin(t[:, None] * freqs))


def test_resblock_output_convs_are_zero_initialised_but_the_final_conv_is_not() -> None:
    unet = SwinUNet(TINY_UNET)
    assert all(not blk.out_layers[3].weight.any() for blk in unet.modules() if hasattr(blk, "out_layers"))
    assert unet.out[2].weight.abs().sum() > 0


def test_tiny_forward_at_64_and_128_recomputes_the_masks() -> None:
    """The official layout at a small width: built for 64, run at 64 and 128 (masks rebuilt for each size)."""
    cfg = UNetConfig(**{**TINY_UNET.__dict__, "image_size": 64, "lq_size": 64, "channel_mult": (1, 2, 2, 2),
                        "num_res_blocks": (1, 1, 1, 1), "attention_resolutions": (64, 32, 16, 8)})
    unet = randomize(SwinUNet(cfg)).eval()
    gen = torch.Generator().manual_seed(0)
    top = unet.input_blocks[1][1].blocks[1]
    deepest = unet.middle_block[1].blocks[1]
    assert cfg.size_multiple == 64 and (deepest.window, deepest.shift) == (8, 0)
    for size in (64, 128):
        x = torch.randn(1, 3, size, size, generator=gen)
        lq = torch.randn(1, 3, size, size, generator=gen)
        with torch.no_grad():
            out = unet(x, torch.tensor([4]), lq)
        assert out.shape == (1, 3, size, size) and torch.isfinite(out).all()
        cached = top._mask_cache[(size, size, x.device, x.dtype)]
        assert torch.equal(cached, shifted_window_mask(size, size, 8, 4))
    assert not deepest._mask_cache  # the 8x8 level stays unshifted at 16x16


def test_batch_samples_are_independent_and_the_timestep_matters() -> None:
    unet = randomize(SwinUNet(TINY_UNET)).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    lq = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        both = unet(x, torch.tensor([1, 1]), lq)
        one = unet(x[:1], torch.tensor([1]), lq[:1])
        other_t = unet(x[:1], torch.tensor([3]), lq[:1])
    torch.testing.assert_close(both[:1], one, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(one, other_t)


def test_tiny_forward_with_a_larger_lq_uses_the_feature_extractor() -> None:
    cfg = UNetConfig(**{**TINY_UNET.__dict__, "in_channels": 8, "out_channels": 8, "lq_size": 128})
    unet = randomize(SwinUNet(cfg)).eval()
    with torch.no_grad():
        out = unet(torch.randn(1, 8, 32, 32), torch.tensor([2]), torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 8, 32, 32)
    assert unet.input_blocks[0][0].in_channels == 8 + 64


@pytest.mark.parametrize(("x_shape", "lq_shape", "match"), [
    ((1, 3, 40, 40), (1, 3, 40, 40), "multiples of 32"),
    ((1, 4, 32, 32), (1, 3, 32, 32), r"\(N, 3, H, W\)"),
    ((1, 3, 32, 32), (1, 3, 64, 64), "lq must have shape"),
])
def test_bad_unet_input_is_rejected(x_shape, lq_shape, match: str) -> None:  # noqa: ANN001
    unet = SwinUNet(TINY_UNET)
    with pytest.raises(ValueError, match=match):
        unet(torch.zeros(x_shape), torch.zeros(1, dtype=torch.long), torch.zeros(lq_shape))


def test_bad_unet_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="power of two"):
        UNetConfig(lq_size=96)
    with pytest.raises(ValueError, match="one entry per"):
        UNetConfig(num_res_blocks=(2, 2))


def test_residual_model_starts_as_bicubic_and_adds_z_y_to_the_network() -> None:
    from tadsr.config import ModelConfig
    from tadsr.diffusion.schedule import scale_input
    from tadsr.inference.pipeline import super_resolve, upsample_lr
    from tadsr.model import SRModel
    from tadsr.nets.autoencoder import PixelUnshuffleConfig

    unet_cfg = UNetConfig(**{**TINY_UNET.__dict__, "in_channels": 48, "out_channels": 48})
    config = ModelConfig(unet=unet_cfg, first_stage=PixelUnshuffleConfig(factor=4),
                         schedule=ScheduleConfig(num_steps=4), scale=4, predict_residual=True)
    model = SRModel(config).eval()
    assert not model.unet.out[2].weight.any() and not model.unet.out[2].bias.any()
    lr = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1  # no padding needed
    bicubic = upsample_lr(lr, 4).clamp(-1, 1)
    for steps in (1, 4):
        out = super_resolve(model, lr, steps=steps, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out, bicubic, atol=0, rtol=0)
    # trained: x0-hat is the network's output plus z_y; the network itself knows nothing of z_y
    randomize(model, seed=2, std=0.05)
    z_t = torch.randn(1, 48, 32, 32, generator=torch.Generator().manual_seed(3))
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    z_y, t = model.first_stage.encode(upsample_lr(lq, 4)), torch.tensor([2])
    with torch.no_grad():
        net = model.unet(scale_input(model.schedule, z_t, t), t, lq)
        torch.testing.assert_close(model.denoiser(z_t, t, lq, z_y), net + z_y)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_equals_the_convolution_it_replaces(channels_last: bool, bias: bool) -> None:
    from tadsr.nets.common import Conv1x1

    conv = Conv1x1(24, 40, bias=bias)
    x = torch.randn(3, 24, 5, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    got = conv(xin)
    want = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert set(conv.state_dict()) == ({"weight", "bias"} if bias else {"weight"})
    (grad_got,) = torch.autograd.grad(got.square().sum(), x)
    (grad_want,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(grad_got, grad_want, atol=1e-4, rtol=1e-5)
