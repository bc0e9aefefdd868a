"""DAPE's image encoder: RAM's Swin transformer with its LoRA merged, then ``image_proj`` (SeeSR, Wu et al. 2024, §3.1).

SeeSR's "degradation-aware prompt extractor" (DAPE) is RAM (Zhang et al. 2023, "Recognize Anything") fine-tuned
with LoRA. Its image encoder is the one read here from cswry/SeeSR at commit 8edecc71 (Apache-2.0; the Swin file is
Microsoft's MIT-licensed Swin Transformer with loralib LoRA added); everything below is written for tadsr, not copied:

* ``ram/models/swin_transformer_lora.py:SwinTransformer`` -- the Swin of Liu et al. 2021 ("Swin Transformer:
  Hierarchical Vision Transformer using Shifted Windows", arXiv:2103.14030): a patch embedding (a stride-``patch``
  convolution, then LayerNorm), stages of blocks alternating window attention and shifted-window attention (with
  the relative position bias of §3.2 and the cyclic-shift mask of §3.2, Fig. 4), patch merging between stages, a
  final LayerNorm, and the average of the tokens prepended as a first token (``forward`` with
  ``idx_to_group_img=None``). In every ``WindowAttention`` the ``qkv`` layer is loralib's
  ``MergedLinear(dim, 3 dim, r=8, enable_lora=[True, False, True])``: LoRA on q and v, ``lora_alpha`` 1.
* ``ram/models/ram_lora.py:RAMLora`` (``vit='swin_l'``, ``image_size=384``, ``configs/swin/config_swinL_384.json``)
  builds it with embed 192, depths (2, 2, 18, 2), heads (6, 12, 24, 48), window 12, patch 4, input 384
  (``DAPE_SWIN_L`` here), and ``generate_image_embeds`` gives ``image_proj(visual_encoder(image))`` with
  ``image_proj = Linear(1536, 512)``: the (N, 1 + 144, 512) embeddings SeeSR's UNet attends to
  (``DapeImageEncoder``).

In eval mode loralib merges each LoRA update into ``qkv.weight`` (``MergedLinear.train(False)``); ``merge_lora`` does
the same to a state dict, so the module here is a plain Swin whose ``qkv`` is an ``nn.Linear`` and whose parameter
names are the official ones: the official state dict, merged, loads strictly. The derived buffers
(``relative_position_index``, ``attn_mask``) are not saved (non-persistent) but recomputed, as RAM's checkpoint
loaders delete them (``ram/models/utils.py:load_checkpoint_swinlarge``); ``drop_derived_buffers`` does that to a
state dict that holds them.

Official behaviour reproduced on purpose (all in ``swin_transformer_lora.py``):

* ``SwinTransformerBlock.__init__``: when a stage's token grid is no larger than the window
  (``min(input_resolution) <= window_size``) the window shrinks to the grid and the shift is 0. In DAPE this makes
  both blocks of stage 4 (12x12 tokens, window 12) unshifted.
* Nothing is padded: a stage whose grid is not a multiple of its window, or an odd grid before a patch merging, makes
  the official constructor (or forward) fail on a ``view``. ``SwinConfig`` refuses such a configuration with a
  one-line ``ConfigError`` instead.
* The shifted-window mask is -100 (not -inf) between tokens of different regions, 0 within one.
* ``qkv`` always has a bias: ``MergedLinear`` is built without passing ``qkv_bias``, so that constructor argument is
  ignored (it is not a ``SwinConfig`` field).
* The input must be exactly ``img_size`` square (``PatchEmbed.forward`` asserts it); the avgpool token is
  ``AdaptiveAvgPool1d(1)`` over the final-norm tokens.

Input preprocessing (resize, normalisation) and RAM's tag head are not part of this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from tadsr.checkpoints import CheckpointError
from tadsr.errors import ConfigError

DAPE_EMBED_DIM = 512  # ram_lora.RAMLora: image_proj = nn.Linear(vision_width, 512)
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")  # recomputed by the modules, never loaded
MASK_VALUE = -100.0  # swin_transformer_lora.SwinTransformerBlock: masked_fill(attn_mask != 0, float(-100.0))
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class SwinConfig:
    """The sizes of RAM's LoRA Swin (``swin_transformer_lora.SwinTransformer``'s constructor arguments that change
    the eval-mode network, and the LoRA settings of its ``qkv`` layers).

    Dropout and stochastic depth (``drop_rate``, ``attn_drop_rate``, ``drop_path_rate``, ``lora_dropout``) are
    identities in eval mode and ``use_checkpoint`` changes no result, so they are not fields; ``qkv_bias`` is ignored
    by the official code (``qkv`` always has a bias). ``lora_scaling`` is loralib's ``lora_alpha / r`` (1/8 in DAPE);
    ``lora_enable`` says which of q, k, v carry LoRA, in loralib's ``enable_lora`` order.
    """

    img_size: int = 384
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    ape: bool = False
    patch_norm: bool = True
    lora_r: int = 8
    lora_scaling: float = 0.125
    lora_enable: tuple[bool, bool, bool] = (True, False, True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        object.__setattr__(self, "lora_enable", tuple(bool(e) for e in self.lora_enable))
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "window_size", "lora_r"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"SwinConfig.{name}: {getattr(self, name)} is not a positive integer")
        if not self.depths or len(self.depths) != len(self.num_heads) or min(self.depths) < 1:
            raise ConfigError(f"SwinConfig.depths {self.depths} / num_heads {self.num_heads}: one positive entry "
                              "per stage in each")
        if len(self.lora_enable) != 3:
            raise ConfigError(f"SwinConfig.lora_enable: {self.lora_enable} needs one entry for each of q, k, v")
        for i, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads, strict=True)):
            if heads < 1 or dim % heads:
                raise ConfigError(f"SwinConfig.num_heads: stage {i} width {dim} is not a multiple of {heads} heads")
        if self.img_size < self.patch_size:
            raise ConfigError(f"SwinConfig.img_size: {self.img_size} is smaller than one {self.patch_size}-pixel patch")
        for i, (grid, window) in enumerate(zip(self.stage_grids, self.stage_windows, strict=True)):
            if grid % window:
                raise ConfigError(f"SwinConfig: stage {i} has a {grid}x{grid} token grid, not a multiple of its "
                                  f"window {window} (the official Swin does not pad)")
            if i < self.num_stages - 1 and grid % 2:
                raise ConfigError(f"SwinConfig: stage {i} has an odd {grid}x{grid} token grid, which patch merging "
                                  "cannot halve")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SwinConfig:
        """A config from the official constructor arguments (e.g. the parity fixtures' ``swin/config.json``).

        Keys that are not fields are ignored (see the class docstring); ``lora_scaling`` is taken from
        ``lora_alpha / lora_r`` when only ``lora_alpha`` is given, and must agree with it when both are.
        """
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        if "lora_alpha" in values:
            r = int(values.get("lora_r", cls.lora_r))
            scaling = values["lora_alpha"] / r
            if "lora_scaling" in values and abs(float(values["lora_scaling"]) - scaling) > 1e-12:
                raise ConfigError(f"SwinConfig: lora_scaling {values['lora_scaling']} is not lora_alpha / lora_r "
                                  f"= {scaling}")
            kwargs["lora_scaling"] = scaling
        return cls(**kwargs)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Token width of each stage: ``embed_dim * 2**i`` (``SwinTransformer.__init__``)."""
        return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

    @property
    def num_features(self) -> int:
        """Width of the output tokens (1536 in DAPE: ``vision_width`` of ``config_swinL_384.json``)."""
        return self.stage_dims[-1]

    @property
    def stage_grids(self) -> tuple[int, ...]:
        """Token grid side of each stage: ``(img_size // patch_size) // 2**i`` (``SwinTransformer.__init__``)."""
        grid = self.img_size // self.patch_size
        return tuple(grid // 2**i for i in range(self.num_stages))

    @property
    def stage_windows(self) -> tuple[int, ...]:
        """Window side of each stage: ``window_size``, or the grid when the grid is no larger
        (``SwinTransformerBlock.__init__``)."""
        return tuple(grid if grid <= self.window_size else self.window_size for grid in self.stage_grids)

    def shift(self, stage: int, block: int) -> int:
        """Cyclic shift of block ``block`` of stage ``stage``: ``window_size // 2`` in odd blocks
        (``BasicLayer.__init__``), 0 in even ones and wherever the grid is no larger than the window
        (``SwinTransformerBlock.__init__``)."""
        if block % 2 == 0 or self.stage_grids[stage] <= self.window_size:
            return 0
        return self.window_size // 2

    @property
    def num_tokens(self) -> int:
        """Tokens out of the encoder: the avgpool token and the last stage's grid (1 + 12 * 12 = 145 in DAPE)."""
        return 1 + self.stage_grids[-1] ** 2


DAPE_SWIN_L = SwinConfig()  # ram_lora.RAMLora(vit='swin_l', image_size=384) with configs/swin/config_swinL_384.json


def relative_position_index(window: int) -> Tensor:
    """(window², window²) int64: row of ``relative_position_bias_table`` for each (query, key) pair of a window.

    Liu et al. 2021 §3.2 (relative position bias); layout as ``swin_transformer_lora.WindowAttention.__init__``:
    for token positions (h, w) in row-major order, index = (dh + window - 1) * (2 window - 1) + (dw + window - 1)
    with dh = h_query - h_key, dw = w_query - w_key.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * H/window * W/window, window, window, C), windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """The inverse of ``window_partition``: (B * nW, window, window, C) -> (B, H, W, C)."""
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def shifted_window_mask(grid: int, window: int, shift: int) -> Tensor:
    """(nW, window², window²) float32 mask of shifted-window attention: 0 between tokens of one region, -100 between
    tokens of different regions.

    Liu et al. 2021 §3.2, Fig. 4 ("efficient batch computation for shifted configuration"): after rolling the grid by
    ``-shift``, the last ``window`` rows (and columns) hold tokens from two regions each, split at ``-shift``; the
    grid is labelled with the 3x3 regions {[0, -window), [-window, -shift), [-shift, end)}² and a pair attends only
    within one label. Values as ``swin_transformer_lora.SwinTransformerBlock.__init__`` (-100.0 for "masked").
    """
    labels = torch.zeros(1, grid, grid, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bounds):
        for j, cols in enumerate(bounds):
            labels[:, rows, cols, :] = 3 * i + j
    windows = window_partition(labels, window).view(-1, window * window)
    differ = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(differ.shape).masked_fill(differ, MASK_VALUE)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch``-pixel patches to tokens: Conv2d(stride = kernel = patch), flattened row-major, then
    LayerNorm when ``patch_norm`` (``swin_transformer_lora.PatchEmbed``)."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.img_size = config.img_size
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=config.patch_size,
                              stride=config.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim) if config.patch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"DAPE's Swin takes (N, C, {self.img_size}, {self.img_size}) images, got "
                             f"{tuple(x.shape)}")
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows of ``window``² tokens, with the learned relative position bias
    (Liu et al. 2021 §3.2; ``swin_transformer_lora.WindowAttention``): softmax(q k^T / sqrt(d) + B + mask) v.

    ``qkv`` is the official loralib ``MergedLinear`` after its LoRA was merged (``merge_lora``): a biased Linear."""

    relative_position_index: Tensor

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.window, self.num_heads = dim, window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("relative_position_index", torch.empty(0, dtype=torch.long), persistent=False)
        self.reset_derived_buffers()

    def reset_derived_buffers(self) -> None:
        """Recompute ``relative_position_index`` on the parameters' device (e.g. after ``to_empty``)."""
        device = self.relative_position_bias_table.device
        self.relative_position_index = relative_position_index(self.window).to(device)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B * nW, window², C); mask: (nW, window², window²) or None."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2, hidden width ``mlp_ratio * dim`` (``swin_transformer_lora.Mlp``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """One (shifted-)window block, pre-norm: x + W-MSA(LN(x)), then x + MLP(LN(x)) (Liu et al. 2021 eq. 3;
    ``swin_transformer_lora.SwinTransformerBlock``). With ``shift`` > 0 the grid is rolled by ``-shift`` before the
    windows and back after, and ``attn_mask`` keeps the wrapped-around regions apart."""

    attn_mask: Tensor | None

    def __init__(self, dim: int, grid: int, window: int, shift: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ConfigError(f"SwinBlock: shift {shift} outside [0, window {window})")
        self.grid, self.window, self.shift = grid, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", None, persistent=False)
        self.reset_derived_buffers()

    def reset_derived_buffers(self) -> None:
        """Recompute ``attn_mask`` (None without a shift) on the parameters' device."""
        if self.shift > 0:
            self.attn_mask = shifted_window_mask(self.grid, self.window, self.shift).to(self.norm1.weight.device)
        self.attn.reset_derived_buffers()

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, self.grid, self.grid, c)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.window).view(-1, self.window * self.window, c)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows.view(-1, self.window, self.window, c), self.window, self.grid, self.grid)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.view(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (order (0,0), (1,0), (0,1), (1,1) as (row, col)), LayerNorm(4C), then
    Linear(4C, 2C) without bias (Liu et al. 2021 §3.1; ``swin_transformer_lora.PatchMerging``)."""

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        x = x.view(b, self.grid, self.grid, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """``depth`` blocks (shift 0, shift, 0, ... as ``SwinConfig.shift``) then, except in the last stage, patch
    merging (``swin_transformer_lora.BasicLayer``)."""

    def __init__(self, config: SwinConfig, stage: int) -> None:
        super().__init__()
        dim, grid, window = config.stage_dims[stage], config.stage_grids[stage], config.stage_windows[stage]
        self.blocks = nn.ModuleList(
            SwinBlock(dim, grid, window, config.shift(stage, i), config.num_heads[stage], config.mlp_ratio)
            for i in range(config.depths[stage]))
        self.downsample = PatchMerging(dim, grid) if stage < config.num_stages - 1 else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class SwinEncoder(nn.Module):
    """RAM's Swin image encoder in eval mode (``swin_transformer_lora.SwinTransformer.forward`` with
    ``idx_to_group_img=None``): (N, in_chans, img_size, img_size) -> (N, 1 + L, num_features), the mean of the
    final-norm tokens followed by those L tokens (L = ``config.num_tokens - 1``).

    Parameter names are the official ones (``patch_embed.*``, ``layers.i.blocks.j.*``, ``layers.i.downsample.*``,
    ``norm.*``, ``absolute_pos_embed`` with ``ape``); load ``merge_lora(official_state, config)`` strictly.
    """

    def __init__(self, config: SwinConfig = DAPE_SWIN_L) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        if config.ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, config.stage_grids[0] ** 2, config.embed_dim))
        self.layers = nn.ModuleList(SwinStage(config, i) for i in range(config.num_stages))
        self.norm = nn.LayerNorm(config.num_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)

    def reset_derived_buffers(self) -> None:
        """Recompute every ``relative_position_index`` and ``attn_mask`` (needed after ``to_empty``, which leaves
        buffers uninitialised)."""
        for module in self.modules():
            if isinstance(module, SwinBlock):
                module.reset_derived_buffers()

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        if self.config.ape:
            x = x + self.absolute_pos_embed
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        pooled = self.avgpool(x.transpose(1, 2)).transpose(1, 2)
        return torch.cat([pooled, x], dim=1)


class DapeImageEncoder(nn.Module):
    """DAPE's image embeddings (``ram_lora.RAMLora.generate_image_embeds``): ``image_proj(visual_encoder(image))``,
    (N, 1 + L, image_proj.out_features) = (N, 145, 512) with ``DAPE_SWIN_L``.

    The attribute names are RAM's (``visual_encoder``, ``image_proj``), so the matching part of a DAPE state dict
    (LoRA merged with ``merge_lora(state, config, prefix="visual_encoder.")``) loads strictly.
    """

    def __init__(self, swin: SwinEncoder, image_proj: nn.Linear) -> None:
        super().__init__()
        if image_proj.in_features != swin.config.num_features:
            raise ConfigError(f"DapeImageEncoder: image_proj takes {image_proj.in_features} features, the Swin gives "
                              f"{swin.config.num_features}")
        self.visual_encoder = swin
        self.image_proj = image_proj

    @classmethod
    def from_config(cls, config: SwinConfig = DAPE_SWIN_L, out_dim: int = DAPE_EMBED_DIM) -> DapeImageEncoder:
        """A fresh encoder: ``SwinEncoder(config)`` and ``Linear(config.num_features, out_dim)``."""
        return cls(SwinEncoder(config), nn.Linear(config.num_features, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.image_proj(self.visual_encoder(x))


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def merge_lora(state: Mapping[str, Tensor], config: SwinConfig, *, prefix: str = "") -> dict[str, Tensor]:
    """The official LoRA state dict with every ``qkv`` update merged and the ``lora_A`` / ``lora_B`` keys removed.

    For each block's ``{prefix}layers.i.blocks.j.attn.qkv`` (width dim = C of stage i, r = ``config.lora_r``,
    s = ``config.lora_scaling``) and the g-th part p of ``config.lora_enable`` that is on (q, v in DAPE)::

        W[p dim : (p + 1) dim] += s * B[g dim : (g + 1) dim] @ A[g r : (g + 1) r]

    i.e. W_q += s B_q A_q and W_v += s B_v A_v, k untouched. Source: loralib 0.1.2 ``layers.py:MergedLinear``
    (``train(False)`` adds ``merge_AB() * scaling``; ``merge_AB`` is a grouped conv1d of ``lora_A`` (r * parts,
    in) by ``lora_B`` (dim * parts, r), zero-padded into the enabled row blocks), as used by
    ``swin_transformer_lora.WindowAttention``: ``MergedLinear(dim, 3 dim, r=8, enable_lora=[True, False, True])``.
    The product is taken in float32 and the result cast back to ``qkv.weight``'s dtype. Keys outside
    ``prefix`` pass through; ``state`` is not modified.

    Raises ``CheckpointError`` (one line, naming the key) for a missing or mis-shaped ``qkv.weight``, ``lora_A`` or
    ``lora_B``, or a LoRA key of a block the config does not have.
    """
    parts = [p for p, on in enumerate(config.lora_enable) if on]
    r = config.lora_r
    merged = dict(state)
    expected: set[str] = set()
    for stage, (depth, dim) in enumerate(zip(config.depths, config.stage_dims, strict=True)):
        for block in range(depth):
            name = f"{prefix}layers.{stage}.blocks.{block}.attn.qkv"
            shapes = {f"{name}.weight": (3 * dim, dim), f"{name}.lora_A": (r * len(parts), dim),
                      f"{name}.lora_B": (dim * len(parts), r)}
            for key, shape in shapes.items():
                if key not in state:
                    raise CheckpointError(f"merge_lora: {key} is missing")
                if _shape(state[key]) != shape:
                    raise CheckpointError(f"merge_lora: {key} has shape {_shape(state[key])}, expected {shape}")
            expected.update(shapes)
            weight = state[f"{name}.weight"]
            lora_a = state[f"{name}.lora_A"].float()
            lora_b = state[f"{name}.lora_B"].float()
            new = weight.float().clone()
            for g, p in enumerate(parts):
                delta = lora_b[g * dim:(g + 1) * dim] @ lora_a[g * r:(g + 1) * r]
                new[p * dim:(p + 1) * dim] += delta * config.lora_scaling
            merged[f"{name}.weight"] = new.to(weight.dtype)
            del merged[f"{name}.lora_A"], merged[f"{name}.lora_B"]
    stray = sorted(k for k in state if k.startswith(prefix) and k.endswith((".lora_A", ".lora_B"))
                   and k not in expected)
    if stray:
        raise CheckpointError(f"merge_lora: {stray[0]} belongs to no block of the config"
                              + (f" ({len(stray) - 1} more)" if len(stray) > 1 else ""))
    return merged


def drop_derived_buffers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without the ``relative_position_index`` / ``attn_mask`` entries, which ``SwinEncoder`` recomputes
    (as ``ram/models/utils.py:load_checkpoint_swinlarge`` deletes them before loading)."""
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in DERIVED_BUFFERS}
