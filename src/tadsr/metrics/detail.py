"""Artefact-sensitive figures for SR outputs: false colour and detail beyond what the LR image holds.

NIQE and gradient energy reward noise and sharpening; these figures stand beside PSNR-Y so that neither can pass
for detail (the embedded models' targets, docs/model-card.md). Images are (H, W, 3) float RGB in [0, 255].

* ``chroma_mse``: the mean squared error of Cb and Cr together (BT.601 'ycbcr', as ``rgb_to_y``); pool it over a
  set and convert once (``mse_to_psnr``), so that gray photos (zero chroma error) do not dominate a mean of dBs;
* ``false_colour``: mean |channel - mean of the channels| of an output whose ground truth has R = G = B;
* ``high_band_energy``: spectral energy of the Y channel (mean removed, 2-D Hann window) above the LR's Nyquist
  frequency, radial frequency in (1 / (2 scale), 1/2] cycles per HR pixel. Divided by the ground truth's it says
  how much of the GT's fine detail the output has (bicubic about 0.02, an unsharp mask about 0.1; noise counts
  too, so read it with PSNR-Y and the colour figures).

Degenerate cases give no number that could pass for a figure: ``mse_to_psnr`` of a zero error is ``inf`` (as PSNR
of identical images); ``detail_ratio`` is NaN, "undefined", where its denominator is: at scale 1 (no band above the
LR's Nyquist frequency) and for a ground truth whose band holds less than ``DETAIL_FLOOR`` levels² per pixel (RMS
0.001 of an 8-bit level: a flat GT, where floating-point noise alone would make the ratio 1e17).
"""

from __future__ import annotations

import numpy as np

from tadsr.bt601 import YCBCR_CB, YCBCR_CR, YCBCR_Y


def ycbcr(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) RGB in [0, 255] -> Y in [16, 235], Cb and Cr in [16, 240] (BT.601 'ycbcr', float64)."""
    r, g, b = (img[..., k].astype(np.float64) / 255 for k in range(3))
    (yr, yg, yb), (br, bg, bb), (cr, cg, cb) = YCBCR_Y, YCBCR_CB, YCBCR_CR
    return 16 + yr * r + yg * g + yb * b, 128 + br * r + bg * g + bb * b, 128 + cr * r + cg * g + cb * b


def chroma_mse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean of the Cb and Cr squared errors, in 8-bit levels squared."""
    _, pcb, pcr = ycbcr(pred)
    _, gcb, gcr = ycbcr(gt)
    return float((np.mean((pcb - gcb) ** 2) + np.mean((pcr - gcr) ** 2)) / 2)


def mse_to_psnr(mse: float, peak: float = 255.0) -> float:
    """PSNR in dB of a mean squared error; ``inf`` for no error (identical images), as ``full_reference.psnr``."""
    return float("inf") if mse <= 0 else float(10 * np.log10(peak**2 / mse))


def is_gray(img: np.ndarray, tolerance: float = 1.0) -> bool:
    """True when every pixel has R = G = B (within ``tolerance`` levels)."""
    return bool(np.abs(img - img.mean(2, keepdims=True)).max() < tolerance)


def false_colour(pred: np.ndarray) -> float:
    """Mean |channel - channel mean| of ``pred``: the colour an output adds to a gray photo, in levels of 255."""
    pred = pred.astype(np.float64)
    return float(np.abs(pred - pred.mean(2, keepdims=True)).mean())


def high_band_energy(img: np.ndarray, scale: int) -> float:
    """Spectral energy of the Y channel above the LR's Nyquist frequency (module docstring)."""
    y = ycbcr(img)[0]
    h, w = y.shape
    radius = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    spectrum = np.abs(np.fft.fft2((y - y.mean()) * np.outer(np.hanning(h), np.hanning(w)))) ** 2
    return float(spectrum[(radius > 1 / (2 * scale)) & (radius <= 0.5)].sum())


DETAIL_FLOOR = 1e-6  # levels² per pixel: the least band energy of a ground truth that a ratio can be taken of


def detail_ratio(pred: np.ndarray, gt: np.ndarray, scale: int) -> float:
    """``high_band_energy`` of the output over the ground truth's; NaN (undefined) at ``scale`` < 2, where the band
    is empty, and for a ground truth with less than ``DETAIL_FLOOR`` in the band (a flat GT)."""
    if scale < 2:
        return float("nan")
    reference = high_band_energy(gt, scale)
    if reference / float(gt.shape[0] * gt.shape[1]) ** 2 < DETAIL_FLOOR:  # per pixel (Parseval), in levels²
        return float("nan")
    return high_band_energy(pred, scale) / reference
