"""tadsr: one-step diffusion super-resolution by time-aware distillation (TAD-SR, He et al., arXiv 2408.07476)."""

__version__ = "0.1.0"
