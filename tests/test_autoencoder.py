"""First stages: VQ encode (no quantisation) / decode (quantised), the LDM layers, the pixel-unshuffle stage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_VQ, randomize
from tadsr.nets.autoencoder import (
    AttnBlock,
    Downsample,
    PixelUnshuffleConfig,
    PixelUnshuffleStage,
    VectorQuantizer,
    VQAutoencoder,
)


@pytest.fixture
def vq() -> VQAutoencoder:
    model = randomize(VQAutoencoder(TINY_VQ), seed=1, std=0.1).eval()
    with torch.no_grad():  # a codebook with a spread comparable to the latents
        model.quantize.embedding.weight.copy_(torch.randn(64, 3, generator=torch.Generator().manual_seed(2)))
    return model


def test_vq_shapes_and_factor(vq: VQAutoencoder) -> None:
    img = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        z = vq.encode(img)
        out = vq.decode(z)
    assert vq.factor == 2 and vq.latent_channels == 3
    assert z.shape == (2, 3, 32, 24) and out.shape == (2, 3, 64, 48)


def test_encode_does_not_quantise_and_decode_does(vq: VQAutoencoder) -> None:
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    book = vq.quantize.embedding.weight
    with torch.no_grad():
        z = vq.encode(img)
        flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
        dist = torch.cdist(flat, book)
        assert dist.min(1).values.max() > 1e-3  # latents are not codebook entries
        idx = vq.quantize.indices(z).flatten()
        assert (dist.gather(1, idx[:, None]).squeeze(1) <= dist.min(1).values + 1e-5).all()  # a nearest code
        picked = book[idx].view(1, 16, 16, 3).permute(0, 3, 1, 2)
        torch.testing.assert_close(vq.decode(z), vq.decode(picked, quantize=False))
        assert not torch.allclose(vq.decode(z), vq.decode(z, quantize=False))


def test_quantizer_chunks_agree_and_gradient_is_straight_through() -> None:
    q = VectorQuantizer(50, 4, chunk=7)
    z = torch.randn(2, 4, 5, 6, requires_grad=True)
    whole = VectorQuantizer(50, 4, chunk=10_000)
    whole.load_state_dict(q.state_dict())
    assert torch.equal(q.indices(z), whole.indices(z))
    q(z).sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_downsample_pads_asymmetrically() -> None:
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each stride-2 window
        down.conv.bias.zero_()
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(down(x), x[..., ::2, ::2])  # no padding on top/left: tap (0, 0) is pixel (2i, 2j)


def test_attention_block_equals_explicit_softmax() -> None:
    block = randomize(AttnBlock(32), seed=3, std=0.2)
    x = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = (m(h).flatten(2) for m in (block.q, block.k, block.v))  # (N, C, HW)
        w = torch.softmax(q.transpose(1, 2) @ k / 32**0.5, dim=-1)  # (N, HW, HW)
        expected = x + block.proj_out((v @ w.transpose(1, 2)).view_as(x))
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_pixel_unshuffle_stage_is_lossless(factor: int) -> None:
    stage = PixelUnshuffleStage(PixelUnshuffleConfig(factor=factor))
    img = torch.rand(2, 3, 16, 24)
    z = stage.encode(img)
    assert z.shape == (2, 3 * factor**2, 16 // factor, 24 // factor) and stage.latent_channels == 3 * factor**2
    assert torch.equal(stage.decode(z), img)
    assert torch.equal(z[:, :factor**2].reshape(2, factor, factor, 16 // factor, 24 // factor)[:, 0, 0],
                       img[:, 0, ::factor, ::factor])


def test_group_norm_runs_in_float32_under_bfloat16() -> None:
    from tadsr.nets.common import normalization

    norm = normalization(32)
    x = (torch.randn(1, 32, 4, 4) * 100 + 1000).bfloat16()
    out = norm(x)
    assert out.dtype == torch.bfloat16
    ref = F.group_norm(x.float(), 32, eps=1e-5)
    torch.testing.assert_close(out.float(), ref, atol=0.02, rtol=0.02)


def test_attention_computes_in_float32_under_bf16_autocast() -> None:
    block = randomize(AttnBlock(32), seed=3, std=0.2).eval()
    x = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fp32 = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = block(x)  # its norm, q/k/v, softmax and projection all in float32: the same sums
            from_bf16 = block(x.bfloat16())  # a bf16 activation in: bf16 out, computed in float32
    assert auto.dtype == torch.float32 and torch.equal(auto, fp32)
    assert from_bf16.dtype == torch.bfloat16
    assert torch.allclose(from_bf16.float(), block(x.bfloat16().float()).bfloat16().float())
