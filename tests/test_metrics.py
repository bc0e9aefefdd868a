"""Metrics: PSNR/SSIM against scikit-image and by hand, Y channel, crop, NIQE against BasicSR, LPIPS."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tadsr.metrics.full_reference import prepare, psnr, rgb_to_y, ssim
from tadsr.metrics.lpips import LPIPS
from tadsr.metrics.niqe import matlab_imresize, niqe

DATA = Path(__file__).parent / "data"
RNG = np.random.default_rng(0)


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.transpose(2, 0, 1).copy())[None]


def _pair() -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(Image.open(DATA / "chelsea_crop.png")).astype(np.float64) / 255
    noisy = (gt + RNG.normal(0, 0.05, gt.shape)).clip(0, 1)
    return noisy, gt


def test_psnr_and_ssim_equal_scikit_image_on_rgb() -> None:
    skm = pytest.importorskip("skimage.metrics")
    pred, gt = _pair()
    ours_psnr = float(psnr(_t(pred), _t(gt)))
    ours_ssim = float(ssim(_t(pred), _t(gt)))
    assert abs(ours_psnr - skm.peak_signal_noise_ratio(gt, pred, data_range=1.0)) < 1e-6
    ref = skm.structural_similarity(gt, pred, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
    assert abs(ours_ssim - ref) < 1e-6


def test_y_channel_psnr_by_hand() -> None:
    a = np.zeros((4, 4, 3))
    b = np.zeros((4, 4, 3))
    b[0, 0] = [1.0, 0.0, 0.0]  # one red pixel: Y differs by 65.481 / 255
    y = rgb_to_y(_t(a))
    assert torch.allclose(y, torch.full_like(y, 16 / 255))
    pa, pb = prepare(_t(a), _t(b), y_channel=True)
    mse = (65.481 / 255) ** 2 / 16
    assert abs(float(psnr(pa, pb)) - 10 * math.log10(1 / mse)) < 1e-9


def test_crop_border_drops_the_border() -> None:
    pred, gt = _pair()
    pa, pb = prepare(_t(pred), _t(gt), crop_border=4)
    assert pa.shape[-2:] == (192 - 8, 288 - 8)
    expected = psnr(_t(pred[4:-4, 4:-4]), _t(gt[4:-4, 4:-4]))
    assert torch.equal(psnr(pa, pb), expected)


def test_matlab_imresize_keeps_constants_and_halves() -> None:
    img = np.full((37, 50), 0.3)
    out = matlab_imresize(img, 0.5)
    assert out.shape == (19, 25) and np.allclose(out, 0.3)


@pytest.mark.parametrize(("name", "reference", "blurred_reference"), [
    ("chelsea_crop.png", 2.560783620225083, 8.757001195813203),
    ("coffee_crop.png", 6.740772251316891, 9.064052645121397),
])
def test_niqe_matches_basicsr(name: str, reference: float, blurred_reference: float) -> None:
    """Reference values: BasicSR 1.4.2 ``calculate_niqe(img, crop_border=0)`` on these files (computed once, with
    BasicSR's own code); BasicSR documents baboon.png = 5.7296 against MATLAB's 5.72957338. The crops are
    scikit-image's chelsea/coffee (BSD). A Gaussian blur (sigma 2) must score worse."""
    img = np.asarray(Image.open(DATA / name)).astype(np.float64) / 255
    assert abs(niqe(img) - reference) < 1e-3
    blurred = cv2.GaussianBlur(np.asarray(Image.open(DATA / name)), (0, 0), 2.0).astype(np.float64) / 255
    value = niqe(blurred)
    assert abs(value - blurred_reference) < 1e-3 and value > niqe(img) + 1


def _random_lpips_files(tmp_path: Path, net: str) -> tuple[Path, Path]:
    """Weights made here in the formats users have: a torchvision backbone .pth and an lpips heads .pth."""
    from tadsr.metrics.lpips import _alexnet_features, _vgg16_features

    features, taps, channels = _alexnet_features() if net == "alex" else _vgg16_features()
    torch.manual_seed(1)
    backbone = {f"features.{k}": v for k, v in features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(channels)}
    torch.save(backbone, tmp_path / f"{net}-backbone.pth")
    torch.save(heads, tmp_path / f"{net}-heads.pth")
    return tmp_path / f"{net}-backbone.pth", tmp_path / f"{net}-heads.pth"


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_is_zero_for_identical_images_and_symmetric(tmp_path: Path, net: str) -> None:
    backbone, heads = _random_lpips_files(tmp_path, net)
    metric = LPIPS(net).load_backbone(backbone).load_heads(heads)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.equal(metric(x, x), torch.zeros(2))
    d_xy, d_yx = metric(x, y), metric(y, x)
    torch.testing.assert_close(d_xy, d_yx)
    assert (d_xy > 0).all()
    assert (metric(x, (x + 0.05 * torch.randn_like(x))) < d_xy).all()  # smaller change, smaller distance


def test_lpips_refuses_files_that_do_not_fit(tmp_path: Path) -> None:
    from tadsr.checkpoints import CheckpointError

    backbone, heads = _random_lpips_files(tmp_path, "vgg")
    with pytest.raises(CheckpointError, match="does not fit"):
        LPIPS("alex").load_backbone(backbone)
    with pytest.raises(CheckpointError, match="does not fit"):
        LPIPS("alex").load_heads(heads)
