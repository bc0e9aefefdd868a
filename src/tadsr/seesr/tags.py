"""DAPE's tag head and input preprocessing: from a low-resolution image to SeeSR's tags and image embeddings.

SeeSR (Wu et al. 2024, "SeeSR: Towards Semantics-Aware Real-World Image Super-Resolution", §3.1) prompts its
diffusion model with the tags that DAPE, a LoRA fine-tune of RAM (Zhang et al. 2023, "Recognize Anything: A Strong
Image Tagging Model"), reads from the LR image, and feeds DAPE's image embeddings to the image cross-attention of
its ControlNet and UNet. The image encoder is ``tadsr.seesr.dape``; this module has the rest. Everything below is
written for tadsr from a reading of cswry/SeeSR at commit 8edecc71 (Apache-2.0; paths relative to that checkout),
not copied:

What the official code does (SeeSR ``test_seesr.py``; TAD-SR's ``TAD-SeeSR/test_tadsr.py`` at LearningHx/TAD-SR
8b0373fd is the same in every line quoted here):

1. Preprocessing (``test_seesr.py:43-50`` and ``get_validation_prompt``, ``:134-144``): ``ToTensor()`` of the RGB
   PIL image (uint8 / 255, float32, (3, H, W)), ``unsqueeze(0)``, then ``Compose([Resize((384, 384)),
   Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])`` on that TENSOR. SeeSR pins torch 2.0.1
   (``requirements.txt:2``), i.e. torchvision 0.15, whose ``Resize`` has ``antialias="warn"``, which for a tensor
   means no antialiasing (the default changed to True in torchvision 0.17; torchvision 0.15 docs,
   https://pytorch.org/vision/2.0/generated/torchvision.transforms.Resize.html). So the official input is
   ``interpolate(x, (384, 384), mode="bilinear", align_corners=False, antialias=False)`` then ``(x - mean) / std``
   per channel. ``dape_input`` reproduces that by default; ``antialias=True`` gives what the same code computes
   under torchvision >= 0.17 (not the released behaviour; it differs a lot when the LR is larger than 384 px).
   TAD-SeeSR's multi-step pipeline (``pipelines/pipeline_tadsr.py``, steps 749/499/249) re-embeds a blend of the
   decoded estimate and the LR with ``F.interpolate(image, size=(384, 384), mode='bicubic')`` (align_corners
   False, no antialias) and the same normalisation: ``interpolation="bicubic"``.
2. Embeddings (``ram/models/ram_lora.py:176-180``, ``generate_image_embeds``): ``image_proj(visual_encoder(x))``,
   (N, 145, 512): the avgpool token first, then the 144 patch tokens. ALL of them go to the ControlNet and the UNet
   (``image_encoder_hidden_states``; duplicated for classifier-free guidance, ``pipelines/pipeline_seesr.py:453``)
   and ALL of them are the keys/values of the tag head: ``generate_tag`` splits off ``image_cls_embeds`` /
   ``image_spatial_embeds`` (``ram_lora.py:196-197``) but uses them only for the batch size.
3. Tag head (``ram_lora.py:131-150``, ``:188-209``): ``label_embed`` (num_class, 512), ``relu(wordvec_proj(...))``
   (``Linear(512, 768)``; an identity when the width is already 512, ``:139-142``) gives one 768-wide query per
   class, repeated over the batch; ``tagging_head`` is ``bert_lora.BertModel`` built from
   ``configs/q2l_config.json`` (2 layers, 768 wide, 4 heads, intermediate 3072, GELU (erf), LayerNorm eps 1e-12)
   with ``encoder_width`` set to 512, no pooler, its embeddings and every self-attention deleted
   (``del_selfattention``, ``:171-174``), called with ``mode='tagging'`` (``bert_lora.py:406``): each layer is
   cross-attention (post-norm: ``LayerNorm(dense(attn) + x)``, ``bert_lora.py:289-300``) then the feed-forward
   (``LayerNorm(dense(gelu(dense(x))) + x)``, ``:352-378``); the attention mask is all ones, so
   ``invert_attention_mask`` adds 0. ``logits = fc(h).squeeze(-1)`` (``Linear(768, 1)``), (N, num_class).
4. LoRA in the tag head (``bert_lora.py:163-170``): ``query`` and ``key`` are loralib ``Linear(r=8)``, lora_alpha 1,
   scaling 1/8; ``value`` is a plain Linear. ``eval()`` merges ``W += (B @ A) * 1/8`` (loralib 0.1.2
   ``layers.py:Linear.train``). Quirk: ``tie_encoder_decoder_weights(self.tag_encoder, self.tagging_head, '', ' ')``
   (``ram_lora.py:149-150``, ``utils.py:21-96``) makes layers 0 and 1 of RAM's 12-layer ``tag_encoder`` SHARE the
   tag head's ``weight`` / ``bias`` tensors, but not their ``lora_A`` / ``lora_B``. ``eval()`` visits
   ``tag_encoder`` first, so the shared query/key weights of layer i get
   ``W + s B_enc,i A_enc,i`` and then ``+ s B_tag,i A_tag,i``: DAPE.pth's ``tag_encoder`` LoRA of layers 0-1 changes
   the tag head. ``tag_head_state`` merges both, in that order.
5. Tags (``ram_lora.py:155-162``, ``:210-223``): ``class_threshold`` is a float32 tensor, 0.68 everywhere, then
   overwritten line by line from ``data/ram_tag_list_threshold.txt`` (4585 lines; no other override in
   ``ram_lora.py``, unlike Tag2Text's fixed ones). A class fires when ``sigmoid(logits) > class_threshold``
   (strictly: a probability equal to its threshold does not fire); the indices in ``delete_tag_index`` are cleared
   (none in SeeSR: ``load_tag_model``, ``test_seesr.py:123-132``, passes none to ``ram()``, and RAMLora's default
   is ``[]``, ``ram_lora.py:31``); the names of the fired classes, by ascending class index (``np.argwhere``), from
   ``data/ram_tag_list.txt`` (``f.read().splitlines()``, 4585 names) are joined with ", " (the empty string when
   none fires). ``generate_tag``'s ``threshold`` argument is unused. SeeSR's prompt is then
   ``f"{tags}, {user_prompt},"`` + the added prompt (``test_seesr.py:142``), only the first image's tags.
6. Precision: DAPE runs in float32 in both test scripts (``load_tag_model`` casts nothing; only the pipeline call
   is under autocast). TAD-SeeSR's pipeline module builds a second DAPE in float16 at import
   (``pipeline_tadsr.py``, ``RAM.to(torch.float16)``) for the multi-step re-embedding; it makes no tags.

``TagHead`` holds the official parameter names (``tagging_head.encoder.layer.i...``, ``label_embed``,
``wordvec_proj``, ``fc``), so ``tag_head_state(official_state, config)`` (LoRA merged) loads strictly.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tadsr.checkpoints import CheckpointError
from tadsr.errors import ConfigError
from tadsr.seesr.dape import DapeImageEncoder

DAPE_INPUT_SIZE = 384  # test_seesr.py:48: transforms.Resize((384, 384))
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # test_seesr.py:49
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_THRESHOLD = 0.68  # ram_lora.RAMLora(threshold=0.68): the value of classes the thresholds file leaves out
TAG_SEPARATOR = ", "  # ram_lora.py:223
# The least LR side DAPE accepts. Bilinear resizing works from 1 px, but an image with a side under 4 px carries
# next to nothing to tag; 4 is also tadsr's least image side anywhere (tadsr.data.image_io.MIN_SIDE).
MIN_LR_SIDE = 4
TAG_HEAD_PREFIXES = ("tagging_head.", "label_embed", "wordvec_proj.", "fc.")
# Parts of RAM's BertModel that ram_lora.del_selfattention deletes before any checkpoint is loaded: the official
# load (strict=False) drops such keys silently, and so does tag_head_state.
_DELETED_PART = re.compile(r"tagging_head\.(embeddings\.|encoder\.layer\.\d+\.attention\.)")
_LORA_PROJECTIONS = ("query", "key")  # bert_lora.BertSelfAttention: lora.Linear(r=8) for these, nn.Linear for value
Interpolation = Literal["bilinear", "bicubic"]


@dataclass(frozen=True)
class TagHeadConfig:
    """Sizes of RAM's tag head (``ram_lora.RAMLora``: ``configs/q2l_config.json`` with ``encoder_width = 512``, and
    the class count of the tag list). ``DAPE_TAG_HEAD`` is DAPE's.

    ``encoder_width`` is both the width of the image embeddings (keys and values of the cross-attention) and of
    ``label_embed``'s rows; the official code fixes it at 512 (``image_proj`` gives 512; ``wordvec_proj`` is
    ``Linear(512, hidden_size)``), smaller values are for tests. ``wordvec_proj`` is an identity when
    ``hidden_size == encoder_width`` (``ram_lora.py:139-142``). ``lora_r`` / ``lora_scaling`` are those of the
    loralib ``Linear`` layers of ``query`` and ``key`` (r 8, lora_alpha 1: scaling 1/8), used only when merging.
    Dropout (0.1 in the config) is an identity in eval mode and is not a field.
    """

    num_classes: int = 4585
    hidden_size: int = 768
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 3072
    encoder_width: int = 512
    layer_norm_eps: float = 1e-12
    lora_r: int = 8
    lora_scaling: float = 0.125

    def __post_init__(self) -> None:
        for name in ("num_classes", "hidden_size", "num_layers", "num_heads", "intermediate_size", "encoder_width",
                     "lora_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"TagHeadConfig.{name}: {value!r} is not a positive integer")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"TagHeadConfig.hidden_size: {self.hidden_size} is not a multiple of num_heads "
                              f"{self.num_heads}")
        if not (math.isfinite(self.layer_norm_eps) and self.layer_norm_eps > 0):
            raise ConfigError(f"TagHeadConfig.layer_norm_eps: {self.layer_norm_eps!r} is not a positive number")
        if not math.isfinite(self.lora_scaling):
            raise ConfigError(f"TagHeadConfig.lora_scaling: {self.lora_scaling!r} is not a finite number")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TagHeadConfig:
        """A config from this class's field names or from BERT's (``q2l_config.json``: ``num_hidden_layers``,
        ``num_attention_heads``, ...); other keys are ignored, but ``hidden_act`` must be ``"gelu"`` (the erf GELU
        the official config names) and ``lora_scaling`` must agree with ``lora_alpha / lora_r`` when both are
        given."""
        aliases = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads", "num_class": "num_classes"}
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = aliases.get(key, key)
            if name in names:
                kwargs[name] = value
        act = values.get("hidden_act", "gelu")
        if act != "gelu":
            raise ConfigError(f"TagHeadConfig: hidden_act {act!r} is not supported (RAM's tag head uses 'gelu')")
        if "lora_alpha" in values:
            scaling = float(values["lora_alpha"]) / int(values.get("lora_r", cls.lora_r))
            if "lora_scaling" in values and abs(float(values["lora_scaling"]) - scaling) > 1e-12:
                raise ConfigError(f"TagHeadConfig: lora_scaling {values['lora_scaling']} is not lora_alpha / lora_r "
                                  f"= {scaling}")
            kwargs["lora_scaling"] = scaling
        return cls(**kwargs)


DAPE_TAG_HEAD = TagHeadConfig()  # ram_lora.RAMLora with q2l_config.json and the 4585-name ram_tag_list.txt


# ----------------------------------------------------------------------------------------------------------------
# The tag head. Layout and names: bert_lora.py (BertSelfAttention / BertSelfOutput / BertAttention /
# BertIntermediate / BertOutput / BertLayer / BertEncoder) after ram_lora.del_selfattention; the layers are BERT's
# (Devlin et al. 2019) post-norm transformer layers with only the cross-attention of Vaswani et al. 2017 §3.2.


class _CrossAttentionProjections(nn.Module):
    """``crossattention.self``: query from the label queries, key and value from the image embeddings."""

    def __init__(self, config: TagHeadConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.encoder_width, config.hidden_size)
        self.value = nn.Linear(config.encoder_width, config.hidden_size)

    def _heads(self, x: Tensor) -> Tensor:
        n, length, width = x.shape
        return x.view(n, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, hidden: Tensor, image: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(head_size)) v per head (``bert_lora.py:197-287``; no mask: all image tokens count),
        heads concatenated back to (N, L, hidden)."""
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(image)), self._heads(self.value(image))
        out = F.scaled_dot_product_attention(q, k, v)
        n, heads, length, size = out.shape
        return out.transpose(1, 2).reshape(n, length, heads * size)


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's ``BertSelfOutput`` / ``BertOutput`` (dropout is off)."""

    def __init__(self, width_in: int, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _CrossAttention(nn.Module):
    """``crossattention``: ``BertAttention(is_cross_attention=True)``."""

    def __init__(self, config: TagHeadConfig) -> None:
        super().__init__()
        self.self = _CrossAttentionProjections(config)
        self.output = _DenseNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, hidden: Tensor, image: Tensor) -> Tensor:
        return self.output(self.self(hidden, image), hidden)


class _Intermediate(nn.Module):
    """``intermediate``: ``dense`` then the exact (erf) GELU (``hidden_act: "gelu"``)."""

    def __init__(self, config: TagHeadConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class TagHeadLayer(nn.Module):
    """One layer of the tag head: ``BertLayer.forward(mode='tagging')`` (``bert_lora.py:406-458``): cross-attention,
    then the feed-forward, each with a residual and a LayerNorm after it."""

    def __init__(self, config: TagHeadConfig) -> None:
        super().__init__()
        self.crossattention = _CrossAttention(config)
        self.intermediate = _Intermediate(config)
        self.output = _DenseNorm(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, hidden: Tensor, image: Tensor) -> Tensor:
        attended = self.crossattention(hidden, image)
        return self.output(self.intermediate(attended), attended)


class _LayerStack(nn.Module):
    """``encoder``: ``BertEncoder`` (its ``layer`` list)."""

    def __init__(self, config: TagHeadConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TagHeadLayer(config) for _ in range(config.num_layers))


class _TaggingBert(nn.Module):
    """``tagging_head``: RAM's ``BertModel(add_pooling_layer=False)`` without embeddings or self-attention."""

    def __init__(self, config: TagHeadConfig) -> None:
        super().__init__()
        self.encoder = _LayerStack(config)

    def forward(self, queries: Tensor, image: Tensor) -> Tensor:
        for layer in self.encoder.layer:
            queries = layer(queries, image)
        return queries


class TagHead(nn.Module):
    """RAM's image-tag recognition decoder in eval mode: image embeddings (N, K, encoder_width) -> one logit per
    class (N, num_classes) (``ram_lora.RAMLora.generate_tag`` up to ``logits``, ``ram_lora.py:188-209``).

    Each class's query is ``relu(wordvec_proj(label_embed[c]))`` (Query2Label's label queries, Liu et al. 2021);
    the queries cross-attend to all K image tokens through ``tagging_head``; ``fc`` maps each to its logit.
    Parameter names are the official ones (``tagging_head.encoder.layer.i.*``, ``label_embed``,
    ``wordvec_proj.*``, ``fc.*``): ``load_tag_head`` / ``tag_head_state`` take an official state dict.
    """

    def __init__(self, config: TagHeadConfig = DAPE_TAG_HEAD) -> None:
        super().__init__()
        self.config = config
        # RAMLora's order (tagging_head, label_embed, wordvec_proj, fc); as there, the state dict lists the
        # module's own parameter label_embed first, then the submodules' keys in this order.
        self.tagging_head = _TaggingBert(config)
        self.label_embed = nn.Parameter(torch.zeros(config.num_classes, config.encoder_width))
        self.wordvec_proj: nn.Module = (nn.Identity() if config.hidden_size == config.encoder_width
                                        else nn.Linear(config.encoder_width, config.hidden_size))
        self.fc = nn.Linear(config.hidden_size, 1)

    def forward(self, image_embeds: Tensor) -> Tensor:
        """image_embeds: (N, K, encoder_width), all K tokens (DAPE: the avgpool token and 144 patch tokens)."""
        width = self.config.encoder_width
        if image_embeds.ndim != 3 or image_embeds.shape[-1] != width or image_embeds.shape[1] < 1:
            raise ValueError(f"TagHead takes image embeddings (N, K, {width}), got {tuple(image_embeds.shape)}")
        queries = F.relu(self.wordvec_proj(self.label_embed))
        queries = queries.unsqueeze(0).expand(image_embeds.shape[0], -1, -1)
        return self.fc(self.tagging_head(queries, image_embeds)).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------------
# Official state dicts.


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _lora_pair(state: Mapping[str, Tensor], name: str, shape_a: tuple[int, int], shape_b: tuple[int, int],
               source: str, shown: str = "") -> tuple[Tensor, Tensor] | None:
    """(lora_A, lora_B) of loralib layer ``name`` when ``state`` has them, checked; None when it has neither.
    Errors name the key as ``shown + key``."""
    key_a, key_b = f"{name}.lora_A", f"{name}.lora_B"
    if key_a not in state and key_b not in state:
        return None
    for key, shape in ((key_a, shape_a), (key_b, shape_b)):
        if key not in state:
            other = key_b if key == key_a else key_a
            raise CheckpointError(f"{source}: {shown}{key} is missing (its pair {shown}{other} is there)")
        if _shape(state[key]) != shape:
            raise CheckpointError(f"{source}: {shown}{key} has shape {_shape(state[key])}, expected {shape}")
    return state[key_a], state[key_b]


def tag_head_state(state: Mapping[str, Tensor], config: TagHeadConfig = DAPE_TAG_HEAD, *, prefix: str = "",
                   source: str | os.PathLike = "<state dict>") -> dict[str, Tensor]:
    """The tag head's part of an official RAM / DAPE state dict, LoRA merged, keyed as ``TagHead``'s state dict.

    ``state`` is what ``ram_lora.ram(pretrained=..., pretrained_condition=...)`` loads: RAM's ``model`` dict
    updated with DAPE.pth's (LoRA) tensors, optionally under ``prefix``. Taken from it:

    * ``tagging_head.*``, ``label_embed``, ``wordvec_proj.*``, ``fc.*``; ``vision_multi.*`` is read as
      ``tagging_head.*`` (RAM's checkpoint loader renames it, ``ram/models/utils.py:308-310``);
      ``tagging_head.embeddings.*`` and ``...layer.i.attention.*`` (deleted by ``del_selfattention`` before RAM
      loads anything) are dropped; every other key (``visual_encoder``, ``tag_encoder``, ``text_decoder``, ...) is
      ignored, except the tied LoRA below.
    * For layer i and p in (query, key): ``W = weight + s B_enc A_enc + s B_tag A_tag`` (s = ``lora_scaling``),
      where (A_enc, B_enc) are ``tag_encoder.encoder.layer.i.crossattention.self.p.lora_A / lora_B`` (the layers
      tied to the tag head, see the module docstring, added first as ``RAMLora.eval()`` does) and (A_tag, B_tag)
      ``tagging_head...p.lora_A / lora_B``; either pair may be absent (RAM without DAPE, or an already merged
      state), not half of one. In float32, cast back to the weight's dtype.

    Raises a one-line ``CheckpointError`` naming the first problem, in ``TagHead``'s key order: a missing key, a
    shape other than ``config``'s, a LoRA half without its pair, or a tag-head key ``TagHead`` does not have (e.g.
    a third layer).
    """
    source = str(source)
    own: dict[str, Tensor] = {}
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if key.startswith("vision_multi."):  # the official rename overwrites a tagging_head key of the same name
            renamed["tagging_head." + key[len("vision_multi."):]] = value
        elif key.startswith(TAG_HEAD_PREFIXES):
            own[key] = value
    own.update(renamed)
    with torch.device("meta"):
        expected = {k: _shape(v) for k, v in TagHead(config).state_dict().items()}
    for key, shape in expected.items():
        if key not in own:
            raise CheckpointError(f"{source}: tag head: {prefix}{key} is missing")
        if _shape(own[key]) != shape:
            raise CheckpointError(f"{source}: tag head: {prefix}{key} has shape {_shape(own[key])}, expected {shape} "
                                  f"(the config: {config.num_classes} classes, width {config.hidden_size}, "
                                  f"{config.num_layers} layers)")
    out = {k: own[k] for k in expected}
    lora_keys = set()
    r, s = config.lora_r, config.lora_scaling
    for i in range(config.num_layers):
        for proj in _LORA_PROJECTIONS:
            width_in = config.hidden_size if proj == "query" else config.encoder_width
            shape_a, shape_b = (r, width_in), (config.hidden_size, r)
            head_name = f"tagging_head.encoder.layer.{i}.crossattention.self.{proj}"
            tied_name = f"tag_encoder.encoder.layer.{i}.crossattention.self.{proj}"
            tied = _lora_pair(state, prefix + tied_name, shape_a, shape_b, source)
            own_pair = _lora_pair(own, head_name, shape_a, shape_b, f"{source}: tag head", prefix)
            lora_keys.update({f"{head_name}.lora_A", f"{head_name}.lora_B"})
            weight = out[f"{head_name}.weight"]
            merged = weight.float().clone()
            for pair in (tied, own_pair):
                if pair is not None:
                    merged += (pair[1].float() @ pair[0].float()) * s
            out[f"{head_name}.weight"] = merged.to(weight.dtype)
    stray = [k for k in own if k not in expected and k not in lora_keys and not _DELETED_PART.match(k)]
    if stray:
        raise CheckpointError(f"{source}: tag head: {prefix}{stray[0]} belongs to no part of the tag head"
                              + (f" ({len(stray) - 1} more)" if len(stray) > 1 else ""))
    return out


def load_tag_head(head: TagHead, state: Mapping[str, Tensor], *, prefix: str = "",
                  source: str | os.PathLike = "<state dict>") -> TagHead:
    """Load an official RAM / DAPE state dict (see ``tag_head_state``) strictly into ``head``; returns ``head``."""
    head.load_state_dict(tag_head_state(state, head.config, prefix=prefix, source=source), strict=True)
    return head


# ----------------------------------------------------------------------------------------------------------------
# Tags.


def _as_thresholds(thresholds: Tensor | Sequence[float], num_classes: int) -> Tensor:
    """float32 (C,) on the CPU, as ``RAMLora.class_threshold`` holds them."""
    values = torch.as_tensor(thresholds).detach().to("cpu", torch.float32).reshape(-1) \
        if isinstance(thresholds, Tensor) else torch.tensor([float(t) for t in thresholds], dtype=torch.float32)
    if values.numel() != num_classes:
        raise ConfigError(f"thresholds: {values.numel()} values for {num_classes} classes")
    if not torch.isfinite(values).all():
        raise ConfigError(f"thresholds: class {int((~torch.isfinite(values)).nonzero()[0])} is not a finite number")
    return values


def _as_deleted(deleted: Iterable[int], num_classes: int) -> tuple[int, ...]:
    out = []
    for index in deleted:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_classes:
            raise ConfigError(f"deleted tags: {index!r} is not a class index in [0, {num_classes})")
        out.append(index)
    return tuple(sorted(set(out)))


def fired_classes(logits: Tensor, thresholds: Tensor | Sequence[float], deleted: Iterable[int] = ()) -> Tensor:
    """(N, C) bool: ``sigmoid(logits) > thresholds`` (strict; thresholds as float32, compared after PyTorch's type
    promotion, as ``ram_lora.py:210-213``), with the ``deleted`` classes cleared (``ram_lora.py:216``).
    ``logits`` is (N, C) or (C,)."""
    if logits.ndim not in (1, 2):
        raise ValueError(f"logits: expected (N, C) or (C,), got {tuple(logits.shape)}")
    logits = logits.unsqueeze(0) if logits.ndim == 1 else logits
    num_classes = logits.shape[-1]
    limits = _as_thresholds(thresholds, num_classes).to(logits.device)
    fired = torch.sigmoid(logits) > limits
    removed = _as_deleted(deleted, num_classes)
    if removed:
        fired[:, list(removed)] = False
    return fired


def tags_of(logits: Tensor, thresholds: Tensor | Sequence[float], tag_list: Sequence[str],
            deleted: Iterable[int] = ()) -> list[str]:
    """One tag string per image, the official rule (``ram_lora.RAMLora.generate_tag``, ``ram_lora.py:210-223``):
    the names of the classes with ``sigmoid(logit) > threshold`` that are not in ``deleted``, by ascending class
    index, joined with ", "; "" when none fires. ``logits``: (N, C) or (C,) (then one string);
    ``thresholds``: C values (used as float32); ``tag_list``: C names."""
    fired = fired_classes(logits, thresholds, deleted)
    if len(tag_list) != fired.shape[-1]:
        raise ConfigError(f"tag list: {len(tag_list)} names for {fired.shape[-1]} classes")
    return [TAG_SEPARATOR.join(tag_list[int(i)] for i in row.nonzero().flatten().tolist()) for row in fired.cpu()]


def read_tag_list(path: str | os.PathLike) -> tuple[str, ...]:
    """Tag names from a file in ``ram_tag_list.txt``'s format: UTF-8, one name a line, read as RAM does
    (``f.read().splitlines()``, ``ram_lora.py:164-168``: no stripping, a final newline adds no name)."""
    path = Path(path)
    try:
        names = tuple(path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable UTF-8 tag list ({err.__class__.__name__})") from None
    if not names:
        raise ConfigError(f"{path}: the tag list holds no name")
    return names


def read_thresholds(path: str | os.PathLike, num_classes: int, default: float = DEFAULT_THRESHOLD) -> Tensor:
    """Per-class thresholds from a file in ``ram_tag_list_threshold.txt``'s format, as RAM builds
    ``class_threshold`` (``ram_lora.py:155-162``): float32, ``default`` (0.68) for every class, then line k's
    ``float(line.strip())`` for class k. More lines than classes, an unparsable or non-finite line: ConfigError
    naming the line (the official code fails with an IndexError / ValueError there)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable UTF-8 thresholds file ({err.__class__.__name__})") from None
    if len(lines) > num_classes:
        raise ConfigError(f"{path}: {len(lines)} thresholds for {num_classes} classes")
    values = torch.full((num_classes,), default, dtype=torch.float32)
    for k, line in enumerate(lines):
        try:
            value = float(line.strip())
        except ValueError:
            raise ConfigError(f"{path}:{k + 1}: {line.strip()[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"{path}:{k + 1}: {line.strip()!r} is not a finite number")
        values[k] = value
    return values


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing and the whole DAPE.


def dape_input(lr: Tensor, size: int = DAPE_INPUT_SIZE, antialias: bool = False,
               interpolation: Interpolation = "bilinear") -> Tensor:
    """DAPE's input from LR images: (N, 3, H, W) in [0, 1] (``ToTensor``'s range) -> (N, 3, size, size), resized and
    ImageNet-normalised as ``test_seesr.py:47-50`` does under torchvision 0.15 (see the module docstring):

        x = interpolate(lr, (size, size), mode=interpolation, align_corners=False, antialias=antialias)
        x = (x - mean) / std            mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), per channel

    ``antialias=False`` (the default) is the released behaviour; ``True`` is torchvision >= 0.17's default for
    tensors. ``interpolation="bicubic"`` is TAD-SeeSR's re-embedding in its multi-step pipeline. An LR already
    ``size`` square is not resampled (as torchvision returns it unchanged). float16 / bfloat16 input is computed in
    float32 (as torchvision casts it); the result is float32 (float64 for float64 input), not clamped.

    Raises a one-line ``ConfigError`` for a tensor that is not (N, 3, H, W) floating point, or an LR side under
    ``MIN_LR_SIDE`` (4) pixels.
    """
    if not isinstance(lr, Tensor) or lr.ndim != 4 or lr.shape[1] != 3 or lr.shape[0] < 1:
        shape = tuple(lr.shape) if isinstance(lr, Tensor) else type(lr).__name__
        raise ConfigError(f"DAPE input: expected LR images (N, 3, H, W), got {shape}")
    if not lr.is_floating_point():
        raise ConfigError(f"DAPE input: expected floating-point values in [0, 1] (ToTensor's), got {lr.dtype}")
    height, width = lr.shape[-2:]
    if min(height, width) < MIN_LR_SIDE:
        raise ConfigError(f"DAPE input: a {width}x{height} LR is too small; each side needs at least {MIN_LR_SIDE} "
                          "pixels")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"DAPE input: size {size!r} is not a positive integer")
    if interpolation not in ("bilinear", "bicubic"):
        raise ConfigError(f"DAPE input: interpolation {interpolation!r} is neither 'bilinear' nor 'bicubic'")
    x = lr if lr.dtype in (torch.float32, torch.float64) else lr.float()
    if (height, width) != (size, size):
        x = F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False, antialias=antialias)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class Dape(nn.Module):
    """SeeSR's DAPE as its test script uses it (``test_seesr.py:get_validation_prompt``): LR images in [0, 1] ->
    (image embeddings (N, K, 512) for the ControlNet / UNet and the tag head, one tag string per image).

    ``tag_list`` and ``thresholds`` have one entry per class (``ram_tag_list.txt`` and
    ``ram_tag_list_threshold.txt`` for DAPE; ``read_tag_list`` / ``read_thresholds`` read them); ``deleted`` is
    RAM's ``delete_tag_index`` (empty in SeeSR). The input size is the Swin's ``img_size`` (384).
    ``thresholds`` is a non-persistent buffer: the state dict stays the official one
    (``encoder.visual_encoder.*``, ``encoder.image_proj.*``, ``head.*``).
    """

    thresholds: Tensor

    def __init__(self, encoder: DapeImageEncoder, head: TagHead, tag_list: Sequence[str],
                 thresholds: Tensor | Sequence[float], deleted: Iterable[int] = (), *, antialias: bool = False,
                 interpolation: Interpolation = "bilinear") -> None:
        super().__init__()
        if encoder.image_proj.out_features != head.config.encoder_width:
            raise ConfigError(f"Dape: the encoder gives {encoder.image_proj.out_features}-wide embeddings, the tag "
                              f"head takes {head.config.encoder_width}")
        num_classes = head.config.num_classes
        if len(tag_list) != num_classes:
            raise ConfigError(f"Dape: tag list of {len(tag_list)} names for a tag head of {num_classes} classes")
        self.encoder = encoder
        self.head = head
        self.tag_list = tuple(str(t) for t in tag_list)
        self.deleted = _as_deleted(deleted, num_classes)
        self.antialias = antialias
        self.interpolation: Interpolation = interpolation
        self.register_buffer("thresholds", _as_thresholds(thresholds, num_classes), persistent=False)

    @property
    def input_size(self) -> int:
        return self.encoder.visual_encoder.config.img_size

    def embed(self, lr: Tensor) -> Tensor:
        """Image embeddings (N, K, 512) of LR images in [0, 1] (``generate_image_embeds`` of ``dape_input``)."""
        x = dape_input(lr, self.input_size, antialias=self.antialias, interpolation=self.interpolation)
        return self.encoder(x.to(self.encoder.image_proj.weight.dtype))

    def forward(self, lr: Tensor) -> tuple[Tensor, list[str]]:
        """(embeddings (N, K, 512), tags: N strings): the same embeddings feed the tag head and SeeSR's networks."""
        embeddings = self.embed(lr)
        logits = self.head(embeddings)
        return embeddings, tags_of(logits, self.thresholds, self.tag_list, self.deleted)
