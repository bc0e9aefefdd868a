"""Blur kernels of the Real-ESRGAN degradation model (Wang et al. 2021, §3.1; docs/implementation-notes.md §4.7).

Every kernel is a float64 (k, k) tensor that sums to 1, with k odd. Random kernels are drawn with an explicit
``torch.Generator``. Formulas (Real-ESRGAN paper, Eq. 2-4):

* Gaussian: exp(-1/2 c^T S^-1 c), S = R diag(sx^2, sy^2) R^T (anisotropic), sx = sy and no rotation (isotropic);
* generalized Gaussian: exp(-0.5 (c^T S^-1 c)^beta);
* plateau: 1 / ((c^T S^-1 c)^beta + 1);
* 2-D sinc (ideal circular low-pass of cutoff w_c): w_c J1(w_c r) / (2 pi r), with w_c^2 / (4 pi) at r = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tadsr.errors import ConfigError

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
PAD_SIZE = 21  # kernels are zero-padded to this size so that a batch can hold kernels of any drawn size


def draw_uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen, dtype=torch.float64).item()


def draw_choice(gen: torch.Generator, n: int, probs: tuple[float, ...] | None = None) -> int:
    if probs is None:
        return int(torch.randint(n, (), generator=gen).item())
    return int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=gen).item())


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """c^T S^-1 c over the (size, size) grid centred on the middle pixel, float64."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    grid = torch.stack([xx, yy], dim=-1)  # (k, k, 2), (x, y)
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    return ((grid @ torch.linalg.inv(cov)) * grid).sum(-1)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> Tensor:
    """Normalised (an)isotropic Gaussian kernel; isotropic when ``sigma_y`` is None."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    k = torch.exp(-0.5 * q)
    return k / k.sum()


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None, theta: float, beta: float) -> Tensor:
    """Normalised generalized Gaussian exp(-0.5 (c^T S^-1 c)^beta): beta < 1 peakier, > 1 flatter than a Gaussian."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    k = torch.exp(-0.5 * q**beta)
    return k / k.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float | None, theta: float, beta: float) -> Tensor:
    """Normalised plateau-shaped kernel 1 / ((c^T S^-1 c)^beta + 1)."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    k = 1 / (q**beta + 1)
    return k / k.sum()


def sinc_kernel(size: int, cutoff: float) -> Tensor:
    """Normalised 2-D sinc (circular low-pass) kernel with cutoff frequency ``cutoff`` (radians per pixel)."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    r = torch.sqrt(xx**2 + yy**2)
    safe = torch.where(r == 0, torch.ones_like(r), r)
    k = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    k = torch.where(r == 0, torch.full_like(r, cutoff**2 / (4 * math.pi)), k)
    return k / k.sum()


def pulse_kernel(size: int = PAD_SIZE) -> Tensor:
    """The identity kernel (a single 1 in the middle)."""
    k = torch.zeros(size, size, dtype=torch.float64)
    k[size // 2, size // 2] = 1
    return k


def pad_kernel(kernel: Tensor, size: int = PAD_SIZE) -> Tensor:
    """Zero-pad a (k, k) kernel to (size, size), centred."""
    pad = (size - kernel.shape[-1]) // 2
    return torch.nn.functional.pad(kernel, (pad, pad, pad, pad)) if pad > 0 else kernel


@dataclass(frozen=True)
class KernelConfig:
    """How one blur kernel is drawn (Real-ESRGAN's ``kernel_list``/``kernel_prob`` and ranges).

    ``sizes`` are the odd kernel sizes to choose from uniformly; with probability ``sinc_prob`` the kernel is a
    sinc with cutoff in [pi/3, pi] (size < 13) or [pi/5, pi] (larger), otherwise one of ``types`` with ``probs``.
    """

    sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    types: tuple[str, ...] = KERNEL_TYPES
    probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: tuple[float, float] = (0.2, 3.0)
    beta_gaussian: tuple[float, float] = (0.5, 4.0)
    beta_plateau: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1

    def __post_init__(self) -> None:
        if any(s % 2 == 0 or s > PAD_SIZE for s in self.sizes):
            raise ConfigError(f"kernel sizes must be odd and <= {PAD_SIZE}, got {self.sizes}")
        if len(self.types) != len(self.probs) or any(t not in KERNEL_TYPES for t in self.types):
            raise ConfigError(f"types must be from {KERNEL_TYPES}, one probability each")


def _beta(gen: torch.Generator, low: float, high: float) -> float:
    """Half the draws below 1 and half above (when the range allows), as Real-ESRGAN draws its shape parameter."""
    if low < 1 < high:
        return draw_uniform(gen, low, 1.0) if draw_uniform(gen, 0, 1) < 0.5 else draw_uniform(gen, 1.0, high)
    return draw_uniform(gen, low, high)


@dataclass(frozen=True)
class KernelParams:
    """A drawn kernel, as numbers (JSON-able); ``build()`` makes the (PAD_SIZE, PAD_SIZE) float64 tensor.

    ``kind`` is one of KERNEL_TYPES, ``"sinc"`` or ``"pulse"``; unused fields are None.
    """

    kind: str
    size: int
    sigma_x: float | None = None
    sigma_y: float | None = None
    theta: float = 0.0
    beta: float | None = None
    cutoff: float | None = None

    def build(self) -> Tensor:
        if self.kind == "pulse":
            return pulse_kernel()
        if self.kind == "sinc":
            return pad_kernel(sinc_kernel(self.size, self.cutoff))
        assert self.sigma_x is not None
        if self.kind.startswith("generalized"):
            k = generalized_gaussian_kernel(self.size, self.sigma_x, self.sigma_y, self.theta, self.beta)
        elif self.kind.startswith("plateau"):
            k = plateau_kernel(self.size, self.sigma_x, self.sigma_y, self.theta, self.beta)
        else:
            k = gaussian_kernel(self.size, self.sigma_x, self.sigma_y, self.theta)
        return pad_kernel(k)


def draw_kernel(cfg: KernelConfig, gen: torch.Generator) -> KernelParams:
    """Draw one blur kernel per ``cfg`` (Real-ESRGAN's ``random_mixed_kernels`` plus its sinc branch)."""
    size = cfg.sizes[draw_choice(gen, len(cfg.sizes))]
    if draw_uniform(gen, 0, 1) < cfg.sinc_prob:
        cutoff = draw_uniform(gen, math.pi / 3, math.pi) if size < 13 else draw_uniform(gen, math.pi / 5, math.pi)
        return KernelParams("sinc", size, cutoff=cutoff)
    kind = cfg.types[draw_choice(gen, len(cfg.types), cfg.probs)]
    sigma_x = draw_uniform(gen, *cfg.sigma)
    isotropic = kind in ("iso", "generalized_iso", "plateau_iso")
    sigma_y = None if isotropic else draw_uniform(gen, *cfg.sigma)
    theta = 0.0 if isotropic else draw_uniform(gen, -math.pi, math.pi)
    beta = None
    if kind.startswith("generalized"):
        beta = _beta(gen, *cfg.beta_gaussian)
    elif kind.startswith("plateau"):
        beta = _beta(gen, *cfg.beta_plateau)
    return KernelParams(kind, size, sigma_x, sigma_y, theta, beta)


def draw_final_sinc(sizes: tuple[int, ...], prob: float, gen: torch.Generator) -> KernelParams:
    """The last stage's kernel: a sinc with cutoff in [pi/3, pi] with probability ``prob``, else the pulse."""
    if draw_uniform(gen, 0, 1) < prob:
        return KernelParams("sinc", sizes[draw_choice(gen, len(sizes))], cutoff=draw_uniform(gen, math.pi / 3, math.pi))
    return KernelParams("pulse", PAD_SIZE)
