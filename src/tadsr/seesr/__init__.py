"""SeeSR and TAD-SeeSR: the SD-based teacher of TAD-SR's Appendix B and its released one-step student.

Modules: ``nets`` (SeeSR's UNet and ControlNet: diffusers' classes plus image cross-attention), ``dape`` (DAPE's
image encoder, RAM's Swin-L with its LoRA merged), ``tags`` (DAPE's tag head, its preprocessing, the tag rule),
``parts`` (the converted model folder and its loaded parts: the one format the converter writes and everything
else reads).
"""
