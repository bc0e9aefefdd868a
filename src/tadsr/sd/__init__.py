"""TAD-SR for SD-based teachers (the paper's Appendix B): the latent VP/DDPM process (``vp``) and a diffusers
backend for Stable-Diffusion super-resolution models (``diffusers_teacher``, the optional extra ``tadsr[sd]``)."""
