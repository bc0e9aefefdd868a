"""Networks: the Swin-UNet denoiser, the VQ autoencoders and the pixel-unshuffle first stage, the time-aware latent
discriminator (``discriminator``) and Real-ESRGAN's RRDBNet (``rrdbnet``, a baseline)."""

from tadsr.nets.autoencoder import PixelUnshuffleConfig, PixelUnshuffleStage, VQAutoencoder, VQConfig
from tadsr.nets.unet import SwinUNet, UNetConfig

__all__ = ["PixelUnshuffleConfig", "PixelUnshuffleStage", "SwinUNet", "UNetConfig", "VQAutoencoder", "VQConfig"]
