"""The preconditioned denoiser D(z_t, t, y) -> x0-hat around a plain network f (the Swin-UNet).

D(z_t, t, y) = c_skip z_y + f(c_in(t) z_t, t, lq), with

* c_in(t) = 1 / sqrt(kappa^2 eta_t + 1): the input normalisation of ResShift (docs/implementation-notes.md §1.3), so
  that the network input has about unit variance at every t (Var z_t = 1 + kappa^2 eta_t for unit-variance data);
* c_skip = 0 (the paper's and the official network: f predicts x0 itself) or 1 (``residual``: f predicts x0 - z_y,
  a re-parametrisation of ours for small CPU-trained models; with a zero-initialised last layer an untrained network
  returns the bicubic image's latent z_y).

Everything that asks the network for x0 goes through this one wrapper: the samplers (Eqs. 2-3), the teacher's loss
(Eq. 4), the student (Eq. 6), HSD/SDS (Eqs. 5, 7-8); the time-aware discriminator reads the encoder features of
the same scaled input (``encoder_features``). The wrapper has no parameters of its own: checkpoints hold the
network's weights only, and the diffusion math (Eqs. 1-4) is unchanged by the choice of c_skip.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from tadsr.diffusion.schedule import Schedule, scale_input


class Denoiser(Protocol):
    """``denoiser(z_t, t, lq, z_y) -> x0_hat``: unscaled (N, C, H, W) latent, (N,) int64 t, (N, 3, h, w) LR in
    [-1, 1], (N, C, H, W) z_y; returns (N, C, H, W)."""

    def __call__(self, z_t: Tensor, t: Tensor, lq: Tensor, z_y: Tensor) -> Tensor: ...


class ResShiftDenoiser:
    """x0-hat = c_skip z_y + net(z_t / sqrt(kappa^2 eta_t + 1), t, lq) (module docstring).

    Args:
        net: the network with the official call ``net(x_scaled, t, lq)`` (a ``SwinUNet``, possibly wrapped in DDP
            or compiled); it is called, never copied.
        schedule: the eta schedule whose ``input_std`` gives c_in.
        residual: c_skip = 1 (the network predicts x0 - z_y) instead of 0.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, residual: bool = False) -> None:
        self.net, self.schedule, self.residual = net, schedule, residual

    def __call__(self, z_t: Tensor, t: Tensor, lq: Tensor, z_y: Tensor) -> Tensor:
        x = scale_input(self.schedule, z_t, t)
        out = self.net(x, t, lq).to(x.dtype)
        return out + z_y.to(x.dtype) if self.residual else out

    def encoder_features(self, z_t: Tensor, t: Tensor, lq: Tensor) -> list[Tensor]:
        """The network's encoder activations on the same scaled input (the time-aware discriminator's features)."""
        return self.net.encoder_features(scale_input(self.schedule, z_t, t), t, lq)
