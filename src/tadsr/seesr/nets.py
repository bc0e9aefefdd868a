"""SeeSR's UNet and ControlNet on current diffusers: the stock ``UNet2DConditionModel`` / ``ControlNetModel`` with
SeeSR's image cross-attention added (SeeSR, Wu et al. 2024, §3.2: "representation embeddings" of DAPE attend in
every cross-attention block; TAD-SR Appendix B distils it).

Layout (read from cswry/SeeSR ``models/unet_2d_blocks.py``, Apache-2.0; written here, not copied): every block with
text cross-attention (``CrossAttnDownBlock2D``, ``UNetMidBlock2DCrossAttn``, ``CrossAttnUpBlock2D``) holds a second
``ModuleList``, ``image_attentions``, one ``Transformer2DModel`` per text attention, built with the text attention's
settings but ``cross_attention_dim`` = ``IMAGE_CROSS_ATTENTION_DIM`` (512: DAPE's ``image_proj`` is
Linear(1536, 512)). In the forward pass each image attention runs right after its text attention, on its output,
attending to the image embeddings. So the state-dict keys are diffusers' own plus
``{down_blocks.i, mid_block, up_blocks.i}.image_attentions.j.*``, and a released SeeSR ``unet/`` or ``controlnet/``
folder loads strictly.

How: ``add_image_attention(model)`` adds the modules and a forward hook on each text attention that chains its image
attention; the embeddings reach the hooks through the returned ``ImageAttention`` (``with image.attending(emb):``),
so diffusers' own forward is used unchanged and the loops never ask which model they have.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tadsr.checkpoints import CheckpointError, check_fits, read_state_dict
from tadsr.errors import first_line

IMAGE_CROSS_ATTENTION_DIM = 512  # SeeSR's ``image_cross_attention_dim`` default; DAPE's image_proj output


class ImageAttention:
    """The image cross-attention added to one network: ``modules`` (each block's ``image_attentions``, in forward
    order) and the embeddings they attend to while ``attending``."""

    def __init__(self) -> None:
        self.embeddings: Tensor | None = None
        self.modules: list[nn.Module] = []

    @contextlib.contextmanager
    def attending(self, embeddings: Tensor) -> Iterator[None]:
        """The network's forward passes inside attend to ``embeddings`` (N, K, IMAGE_CROSS_ATTENTION_DIM)."""
        previous, self.embeddings = self.embeddings, embeddings
        try:
            yield
        finally:
            self.embeddings = previous


class _ChainImageAttention:
    """A forward hook for a text attention: its output, then ``twin`` (its image attention) on it, attending to
    ``handle.embeddings``. An object, not a closure, so that ``copy.deepcopy`` of the network (a student, an EMA)
    gives a copy whose hooks run the copy's own image attentions and read the copy's handle."""

    def __init__(self, handle: ImageAttention, twin: nn.Module) -> None:
        self.handle, self.twin = handle, twin

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        embeddings = self.handle.embeddings
        if embeddings is None:
            raise RuntimeError("a SeeSR network was called without image embeddings (use ImageAttention.attending)")
        hidden = output[0] if isinstance(output, tuple) else output.sample
        hidden = self.twin(hidden, encoder_hidden_states=embeddings,
                           cross_attention_kwargs=kwargs.get("cross_attention_kwargs"),
                           attention_mask=kwargs.get("attention_mask"),
                           encoder_attention_mask=kwargs.get("encoder_attention_mask"), return_dict=False)[0]
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        output.sample = hidden
        return output


def _image_twin(attention: nn.Module, image_dim: int) -> nn.Module:
    """A ``Transformer2DModel`` with ``attention``'s settings, attending to ``image_dim``-wide embeddings."""
    settings = {k: v for k, v in dict(attention.config).items() if not k.startswith("_")}
    return type(attention)(**{**settings, "cross_attention_dim": image_dim})


def add_image_attention(model: nn.Module, image_dim: int = IMAGE_CROSS_ATTENTION_DIM) -> ImageAttention:
    """Add SeeSR's image cross-attention to a diffusers ``UNet2DConditionModel`` or ``ControlNetModel`` (module
    docstring), in place; returns what feeds it. The new modules are built on the current default device (the
    meta device inside ``torch.device("meta")``)."""
    image = ImageAttention()
    blocks = [*model.down_blocks, model.mid_block, *getattr(model, "up_blocks", [])]
    for block in blocks:
        if not getattr(block, "has_cross_attention", False):
            continue
        twins = nn.ModuleList([_image_twin(attention, image_dim) for attention in block.attentions])
        block.image_attentions = twins
        for attention, twin in zip(block.attentions, twins, strict=True):
            attention.register_forward_hook(_ChainImageAttention(image, twin), with_kwargs=True)
            image.modules.append(twin)
    model.seesr_image_attention = image  # a plain attribute (not a module): ``image_attention_of``
    return image


def image_attention_of(model: nn.Module) -> ImageAttention:
    """The ``ImageAttention`` that feeds ``model``'s image cross-attention (``add_image_attention``'s), also on a
    ``copy.deepcopy`` of it."""
    image = getattr(model, "seesr_image_attention", None)
    if not isinstance(image, ImageAttention):
        raise TypeError(f"{type(model).__name__} has no SeeSR image cross-attention (add_image_attention)")
    return image


NETWORKS = {"unet": "UNet2DConditionModel", "controlnet": "ControlNetModel"}  # a release's folder -> its class
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # save_pretrained's names


def load_network(folder: str | os.PathLike, part: str) -> tuple[nn.Module, ImageAttention]:
    """A released SeeSR / TAD-SeeSR ``unet/`` or ``controlnet/`` folder (``part``; ``save_pretrained``'s layout:
    ``config.json`` and ``diffusion_pytorch_model.safetensors``, or a ``.bin`` read with ``torch.load(weights_only=
    True)``) as the diffusers network with its image cross-attention, in eval mode, float32.

    The network is built on the meta device from the config and its parameter shapes are compared with the
    weights' (``checkpoints.check_fits``: one line naming the missing, unexpected and mis-shaped keys) before any
    memory is allocated; the weights are then loaded strictly, in place of the meta tensors."""
    import diffusers

    folder = Path(folder)
    config = _read_config(folder, NETWORKS[part])
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")
    cls = getattr(diffusers, NETWORKS[part])
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
            image = add_image_attention(model)
    except Exception as err:  # diffusers' own checks of a config it cannot build
        raise CheckpointError(f"{folder / 'config.json'}: not a {NETWORKS[part]} config ({first_line(err)})") \
            from None
    state = read_state_dict(weights)
    check_fits(model, {k: tuple(v.shape) for k, v in state.items()}, weights)
    # float32 copies, one at a time: their own memory, aligned (a safetensors read need not be, and the CPU's
    # matmul kernels then sum in another order)
    model.load_state_dict({k: state.pop(k).to(torch.float32, copy=True) for k in list(state)}, strict=True,
                          assign=True)
    meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise CheckpointError(f"{weights}: no values for {', '.join(meta[:3])}")
    return model.eval(), image


def _read_config(folder: Path, class_name: str) -> dict[str, Any]:
    """``folder/config.json`` as a dict for ``class_name``, SeeSR's ``use_image_cross_attention`` taken out (it
    must be true: ``add_image_attention`` adds what it stands for)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a SeeSR release holds unet/ and controlnet/ folders with "
                              "config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable JSON config ({first_line(err)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    if config.get("_class_name", class_name) != class_name:
        raise CheckpointError(f"{path}: a {config['_class_name']!r} config; this folder holds a {class_name}")
    if config.pop("use_image_cross_attention", None) is not True:
        raise CheckpointError(f"{path}: use_image_cross_attention is not true: not a SeeSR network")
    return config
