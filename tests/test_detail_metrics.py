"""tadsr.metrics.detail: chroma error, false colour on gray photos, detail above the LR's Nyquist frequency."""

from __future__ import annotations

import cv2
import numpy as np

from tadsr.metrics.detail import chroma_mse, detail_ratio, false_colour, high_band_energy, is_gray, mse_to_psnr, ycbcr


def texture(size: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (size, size, 3))


def test_ycbcr_of_gray_has_neutral_chroma() -> None:
    y, cb, cr = ycbcr(np.full((2, 2, 3), 255.0))
    np.testing.assert_allclose(y, 235.0)
    np.testing.assert_allclose(cb, 128.0, atol=1e-9)
    np.testing.assert_allclose(cr, 128.0, atol=1e-9)


def test_chroma_mse_of_a_red_shift() -> None:
    """+10 on R moves Cb by -37.797/255*10 and Cr by 112/255*10 (BT.601), nothing else."""
    gt = texture()
    pred = gt.copy()
    pred[..., 0] += 10
    expected = ((37.797 / 255 * 10) ** 2 + (112.0 / 255 * 10) ** 2) / 2
    assert abs(chroma_mse(pred, gt) - expected) < 1e-9
    assert chroma_mse(gt, gt) == 0 and mse_to_psnr(255.0**2 / 100) == 20.0


def test_false_colour_is_zero_for_gray_and_counts_added_colour() -> None:
    gray = np.repeat(texture()[..., :1], 3, axis=2)
    assert is_gray(gray) and false_colour(gray) < 1e-12
    tinted = gray.copy()
    tinted[..., 2] += 3  # B +3: mean |channel - mean| = (1 + 1 + 2) / 3
    assert not is_gray(tinted)
    assert abs(false_colour(tinted) - 4 / 3) < 1e-9


def test_detail_ratio_tells_detail_from_blur() -> None:
    gt = cv2.GaussianBlur(texture(), (0, 0), 0.7)
    assert abs(detail_ratio(gt, gt, 4) - 1.0) < 1e-12
    lr = cv2.resize(gt, (32, 32), interpolation=cv2.INTER_AREA)
    bicubic = cv2.resize(lr, (128, 128), interpolation=cv2.INTER_CUBIC)
    assert detail_ratio(bicubic, gt, 4) < 0.1  # the band the LR cannot hold stays nearly empty
    flat = np.full_like(gt, 100.0)
    assert high_band_energy(flat, 4) < 1e-6  # the mean is removed: a constant image has no energy
