"""The teacher pipeline: LR -> bicubic -> encode -> sample -> decode -> clamp, with padding and cropping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize
from tadsr.config import ModelConfig
from tadsr.diffusion.schedule import scale_input
from tadsr.inference import encode_lr, super_resolve
from tadsr.inference.padding import crop_to, pad_to_multiple
from tadsr.model import SRModel


@pytest.mark.parametrize(("shape", "multiple"), [((1, 3, 5, 7), 4), ((2, 3, 3, 2), 16), ((1, 3, 1, 9), 8),
                                                 ((1, 3, 64, 64), 64)])
def test_pad_to_multiple_reflects_and_crops_back(shape: tuple[int, ...], multiple: int) -> None:
    x = torch.rand(shape)
    padded, size = pad_to_multiple(x, multiple)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert padded.shape[-2] - multiple < shape[-2] <= padded.shape[-2]
    assert torch.equal(crop_to(padded, size), x)


def test_pad_is_a_reflection() -> None:
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 2, 5)
    padded, _ = pad_to_multiple(x, 8)
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]


def test_pixel_unshuffle_teacher_end_to_end(tiny_pixel_model_config: ModelConfig) -> None:
    model = randomize(SRModel(tiny_pixel_model_config), seed=3, std=0.02).eval()
    lr = torch.rand(2, 3, 20, 27) * 2 - 1
    out = super_resolve(model, lr, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 80, 108)
    assert out.min() >= -1 and out.max() <= 1
    again = super_resolve(model, lr, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    other = super_resolve(model, lr, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, other)


def test_one_step_is_decode_of_one_unet_call(tiny_vq_model_config: ModelConfig) -> None:
    model = randomize(SRModel(tiny_vq_model_config), seed=5, std=0.03).eval()
    lr = torch.rand(1, 3, 32, 32) * 2 - 1
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    out = super_resolve(model, lr, steps=1, noise=noise)
    with torch.no_grad():
        bicubic = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False)
        z_y = model.first_stage.encode(bicubic)
        assert torch.equal(z_y, encode_lr(model, lr))
        t = torch.tensor([4])
        z_t = z_y + 2.0 * 0.99 * noise
        x0 = model.unet(scale_input(model.schedule, z_t, t), t, lr)
        expected = model.first_stage.decode(x0).clamp(-1, 1)
    torch.testing.assert_close(out, expected)


def test_role_sets_the_default_steps(tiny_pixel_model_config: ModelConfig) -> None:
    teacher = randomize(SRModel(tiny_pixel_model_config), seed=3, std=0.02).eval()
    student = SRModel(ModelConfig(**{**tiny_pixel_model_config.__dict__, "role": "student"})).eval()
    student.load_state_dict(teacher.state_dict())
    lr = torch.rand(1, 3, 32, 32) * 2 - 1
    noise = torch.randn(1, 48, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(super_resolve(student, lr, noise=noise), super_resolve(teacher, lr, steps=1, noise=noise))
    assert not torch.equal(super_resolve(teacher, lr, noise=noise), super_resolve(teacher, lr, steps=1, noise=noise))


def test_bad_pipeline_arguments(tiny_pixel_model_config: ModelConfig) -> None:
    model = SRModel(tiny_pixel_model_config).eval()
    with pytest.raises(ValueError, match="steps must be 1"):
        super_resolve(model, torch.zeros(1, 3, 32, 32), steps=3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        super_resolve(model, torch.zeros(1, 4, 32, 32))


def test_model_config_checks_channel_and_scale_consistency(tiny_pixel_model_config: ModelConfig) -> None:
    with pytest.raises(ValueError, match="latent channels"):
        ModelConfig(**{**tiny_pixel_model_config.__dict__, "first_stage": tiny_pixel_model_config.first_stage.__class__(
            factor=2)})
    with pytest.raises(ValueError, match="factor"):
        ModelConfig(**{**tiny_pixel_model_config.__dict__, "scale": 2})


def test_bfloat16_autocast_on_cpu_stays_close(tiny_vq_model_config: ModelConfig) -> None:
    model = randomize(SRModel(tiny_vq_model_config), seed=5, std=0.03).eval()
    lr = torch.rand(1, 3, 32, 32) * 2 - 1
    kwargs = dict(steps=1, noise=torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)),
                  output="latent")
    ref = super_resolve(model, lr, **kwargs)
    low = super_resolve(model, lr, autocast_dtype=torch.bfloat16, **kwargs)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_matches_fp32(tiny_vq_model_config: ModelConfig, dtype: torch.dtype) -> None:
    model = randomize(SRModel(tiny_vq_model_config), seed=5, std=0.03).eval().cuda()
    lr = (torch.rand(2, 3, 64, 64) * 2 - 1).cuda()
    noise = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)).cuda()
    ref = super_resolve(model, lr, noise=noise, output="latent")
    low = super_resolve(model, lr, noise=noise, output="latent", autocast_dtype=dtype)
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
