"""NIQE, the "completely blind" natural image quality evaluator (Mittal et al., IEEE SPL 2013). Lower is better.

Follows the official MATLAB release and BasicSR's ``calculate_niqe`` conventions (which documents baboon.png:
5.7296, MATLAB R2021a 5.72957338): the image is converted to the BT.601 Y channel in [0, 255] and rounded, cut to
whole 96x96 blocks; at two scales (the second from MATLAB's antialiased bicubic ``imresize`` by 0.5), MSCN
coefficients (7x7 Gaussian window, replicate borders, (I - mu) / (sigma + 1)) give per block an AGGD fit of the
coefficients (2 features) and of their products with the 4 neighbours (4 x 4 features); the distance between the
multivariate Gaussian of the blocks and the pristine model (package data, see data/README.md) is
sqrt((mu_p - mu_d)^T pinv((S_p + S_d) / 2) (mu_p - mu_d)).

The covariance of the blocks needs two of them: an image must hold two whole 96x96 blocks (``MIN_BLOCKS``; 96x192
or larger), and NIQE is NaN, "undefined", where fewer than two blocks have features (a block whose coefficients
are all of one sign, as in a flat region, has none: NaN, as in the reference, which drops such blocks). NumPy's
warnings on those blocks (means of empty slices) are the expected path and kept quiet.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from importlib.resources import files

import cv2
import numpy as np

from tadsr.bt601 import YCBCR_Y

BLOCK = 96
MIN_BLOCKS = 2  # whole BLOCK x BLOCK blocks, for a covariance


def fits(height: int, width: int) -> bool:
    """True when a (``height``, ``width``) luma image holds the ``MIN_BLOCKS`` whole blocks NIQE needs."""
    return height >= BLOCK and width >= BLOCK and (height // BLOCK) * (width // BLOCK) >= MIN_BLOCKS


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with (files("tadsr.metrics") / "data" / "niqe_pris_params.npz").open("rb") as f:
        data = np.load(f)
        return data["mu_pris_param"], data["cov_pris_param"], data["gaussian_window"]


@lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    """The shape grid 0.2:0.001:10 and r(gamma) = Gamma(2/g)^2 / (Gamma(1/g) Gamma(3/g)) on it."""
    shapes = np.arange(0.2, 10.001, 0.001)
    lg = np.vectorize(math.lgamma)
    r = np.exp(2 * lg(2 / shapes) - lg(1 / shapes) - lg(3 / shapes))
    return shapes, r


def aggd_fit(x: np.ndarray) -> tuple[float, float, float]:
    """Moment-matching fit of an asymmetric generalized Gaussian: (shape alpha, left scale, right scale).

    The moments are taken in the block's own dtype (float32, as in BasicSR), so that the grid search below picks
    the same shape as the reference implementation.
    """
    x = x.ravel()
    shapes, r = _aggd_table()
    left = np.sqrt(np.mean(x[x < 0] ** 2))
    right = np.sqrt(np.mean(x[x > 0] ** 2))
    gamma_hat = left / right
    r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    r_norm = (r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1)) / ((gamma_hat**2 + 1) ** 2)
    alpha = float(shapes[np.argmin((r - r_norm) ** 2)])
    ratio = math.sqrt(math.gamma(1 / alpha) / math.gamma(3 / alpha))
    return alpha, float(left) * ratio, float(right) * ratio


def block_features(block: np.ndarray) -> list[float]:
    """18 features of one block of MSCN coefficients."""
    alpha, left, right = aggd_fit(block)
    feats = [alpha, (left + right) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, left, right = aggd_fit(block * np.roll(block, shift, axis=(0, 1)))
        mean = (right - left) * math.gamma(2 / alpha) / math.gamma(1 / alpha)
        feats += [alpha, mean, left, right]
    return feats


def _cubic(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    return ((1.5 * a**3 - 2.5 * a**2 + 1) * (a <= 1)
            + (-0.5 * a**3 + 2.5 * a**2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def _resize_matrix(n_in: int, scale: float) -> np.ndarray:
    """(n_out, n_in) matrix of MATLAB's bicubic ``imresize`` along one axis, antialiased, symmetric borders."""
    n_out = math.ceil(n_in * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    w = w / w.sum(1, keepdims=True)
    mirrored = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    cols = mirrored[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.repeat(np.arange(n_out), taps), cols.ravel()), w.ravel())
    return m


def matlab_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` (bicubic, antialiasing) of a 2-D float image."""
    return _resize_matrix(img.shape[0], scale) @ img @ _resize_matrix(img.shape[1], scale).T


def niqe_y(y: np.ndarray) -> float:
    """NIQE of a 2-D luma image in [0, 255] (already rounded as MATLAB's uint8 would be); NaN where fewer than two
    blocks have features (module docstring). A ValueError for an image without two whole blocks."""
    mu_p, cov_p, window = pristine_model()
    h, w = y.shape
    nh, nw = h // BLOCK, w // BLOCK
    if not fits(h, w):
        raise ValueError(f"NIQE needs two whole {BLOCK}x{BLOCK} blocks ({BLOCK}x{2 * BLOCK} or larger), got {w}x{h}")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # flat blocks: NaN features, as in the reference
        return _niqe_blocks(y, nh, nw, mu_p, cov_p, window)


def _niqe_blocks(y: np.ndarray, nh: int, nw: int, mu_p: np.ndarray, cov_p: np.ndarray, window: np.ndarray) -> float:
    img = y[: nh * BLOCK, : nw * BLOCK].astype(np.float32)  # float32 throughout, as the reference

    def smooth(a: np.ndarray) -> np.ndarray:  # accumulate in float64, store float32
        return cv2.filter2D(a.astype(np.float64), -1, window, borderType=cv2.BORDER_REPLICATE).astype(np.float32)

    features = []
    for scale in (1, 2):
        mu = smooth(img)
        sigma = np.sqrt(np.abs(smooth(np.square(img)) - np.square(mu)))
        mscn = (img - mu) / (sigma + 1)
        size = BLOCK // scale
        features.append(np.array([block_features(mscn[i * size:(i + 1) * size, j * size:(j + 1) * size])
                                  for j in range(nw) for i in range(nh)]))
        if scale == 1:
            img = matlab_imresize(img / np.float32(255.0), 0.5).astype(np.float32) * np.float32(255.0)
    feats = np.concatenate(features, axis=1)
    if (~np.isnan(feats).any(axis=1)).sum() < MIN_BLOCKS:
        return float("nan")
    mu_d = np.nanmean(feats, axis=0)
    cov_d = np.cov(feats[~np.isnan(feats).any(axis=1)], rowvar=False)
    diff = mu_p - mu_d
    return float(np.sqrt(diff @ np.linalg.pinv((cov_p + cov_d) / 2) @ diff.T).squeeze())


def niqe(rgb: np.ndarray, crop_border: int = 0) -> float:
    """NIQE of an (H, W, 3) RGB image in [0, 1] (or a 2-D gray one), on the BT.601 Y channel."""
    if rgb.ndim == 3:
        # BasicSR's float32 path (bgr2ycbcr(img / 255) * 255): the rounding below must see the same values
        x = rgb.astype(np.float32)
        y = ((x.astype(np.float64) @ np.array(YCBCR_Y) + 16.0) / 255.0).astype(np.float32)
        y = y * np.float32(255.0)
    else:
        y = (rgb.astype(np.float32) * np.float32(255.0))
    if crop_border:
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    return niqe_y(np.round(y))
