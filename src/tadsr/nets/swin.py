"""Swin transformer layer of the ResShift UNet, in (N, C, H, W) layout.

Module and parameter names match the official checkpoints (docs/implementation-notes.md §3.1, §3.3):
``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv, attn.proj, attn.relative_position_bias_table, norm2, mlp.fc1,
mlp.fc2}``, ``patch_unembed.proj``, and the buffers ``attn.relative_position_index`` and ``attn_mask`` (shifted blocks).
Two behaviours of the official network are reproduced on purpose (docs/implementation-notes.md §3.1b):

* there is no outer residual around the layer (1x1 conv in -> blocks -> 1x1 conv out);
* the shifted-window mask is the official one, not the textbook Swin mask (see ``shifted_window_mask``), and it is
  always built for the runtime feature size; the stored ``attn_mask`` buffer exists only so that official checkpoints
  load strictly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tadsr.nets.common import Conv1x1, normalization

MASK_VALUE = -100.0


def relative_position_index(window: int) -> Tensor:
    """Standard Swin relative-position index, (window^2, window^2) int64, into a (2w-1)^2 bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2), from 0
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> Tensor:
    """Additive attention mask of the official ResShift shifted block, (nW, window^2, window^2) float32.

    With windows numbered n = i * (width / window) + j and tokens f = window * r + c row-major inside a window,
    token f of window (i, j) gets label(window * i + c), where label(y) = 0 for y < H - window, 1 for
    H - window <= y < H - shift, 2 otherwise; tokens with different labels are masked (-100). Only the bottom row of
    windows is masked, and there by column halves. This is what the official code computes (its region map is
    built along H only and read back transposed), and the released weights were trained with it
    (docs/implementation-notes.md §3.1b).
    """
    rows = torch.arange(height)
    label = (rows >= height - window).long() + (rows >= height - shift).long()  # (H,)
    n_rows, n_cols = height // window, width // window
    col = torch.arange(window * window) % window  # column c of token f
    lab = label[torch.arange(n_rows)[:, None] * window + col[None, :]]  # (n_rows, N)
    lab = lab[:, None, :].expand(n_rows, n_cols, window * window).reshape(n_rows * n_cols, window * window)
    return (lab[:, :, None] != lab[:, None, :]).float() * MASK_VALUE


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, C, H, W) -> (B * nW, window^2, C), windows row-major, tokens row-major inside each window."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of ``window_partition``: (B * nW, window^2, C) -> (B, C, H, W)."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c)  # (B, nh, nw, wr, wc, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, c, height, width)


_PORTABLE = False


@contextlib.contextmanager
def portable_attention() -> Iterator[None]:
    """Inside the block, window attention runs as plain ops (softmax(QK^T / sqrt(d) + B) V, the heads joined by
    concatenation) instead of ``scaled_dot_product_attention``: the same function, in a form the ONNX exporter
    translates (``tadsr.export``)."""
    global _PORTABLE
    previous, _PORTABLE = _PORTABLE, True
    try:
        yield
    finally:
        _PORTABLE = previous


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias, through SDPA."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: (B * nW, N, C) windows; mask: (nW, N, N) additive or None. Returns (B * nW, N, C)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * nW, heads, N, hd)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if mask is None:
            bias = bias.unsqueeze(0)
        else:
            n_win = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask.unsqueeze(1)).repeat(bw // n_win, 1, 1, 1)  # (B * nW, heads, N, N)
        if _PORTABLE:
            # the same attention, spelled so that the ONNX exporter's decompositions keep the strides right: SDPA and
            # the reshape of the transposed heads both come out mis-strided (torch 2.13); heads joined by cat
            attn = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias.to(q.dtype), dim=-1)
            return self.proj(torch.cat((attn @ v).unbind(1), dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv, in (N, C, H, W)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Conv1x1(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Conv1x1(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """x + (S)W-MSA(GN(x)), then x + MLP(GN(x)); window and shift fixed at construction (docs/implementation-notes.md
    §3.1b)."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        if resolution <= window:  # the level is one window: no partition, no shift
            window, shift = resolution, 0
        self.window, self.shift = window, shift
        self.norm1 = normalization(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = normalization(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        # Persistent only so that official checkpoints (which store it) load strictly; never read in forward.
        mask = shifted_window_mask(resolution, resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask)
        self._mask_cache: dict[tuple, Tensor] = {}

    def _mask(self, height: int, width: int, ref: Tensor) -> Tensor | None:
        if self.shift == 0:
            return None
        if _PORTABLE:  # computed in the graph from the (possibly symbolic) size, never from the cache
            return shifted_window_mask(height, width, self.window, self.shift).to(device=ref.device, dtype=ref.dtype)
        key = (height, width, ref.device, ref.dtype)
        if key not in self._mask_cache:
            if len(self._mask_cache) > 8:
                self._mask_cache.clear()
            mask = shifted_window_mask(height, width, self.window, self.shift)
            self._mask_cache[key] = mask.to(device=ref.device, dtype=ref.dtype)
        return self._mask_cache[key]

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        if h % self.window or w % self.window:
            raise ValueError(f"Swin block needs H and W divisible by its window {self.window}, got {h}x{w}")
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(2, 3))
        y = window_reverse(self.attn(window_partition(y, self.window), self._mask(h, w, y)), self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(2, 3))
        x = x + y
        return x + self.mlp(self.norm2(x))


class _Proj(nn.Module):
    """A 1x1 conv under the attribute name ``proj`` (official key layout ``patch_embed.proj``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = Conv1x1(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class SwinLayer(nn.Module):
    """1x1 conv C -> embed_dim, ``depth`` Swin blocks (odd ones shifted by window // 2), 1x1 conv back to C.

    No residual around the whole layer: the official network has none (docs/implementation-notes.md §3.1).
    """

    def __init__(
        self, channels: int, embed_dim: int, num_heads: int, window: int, depth: int, resolution: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.patch_embed = _Proj(channels, embed_dim)
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)
        )
        self.patch_unembed = _Proj(embed_dim, channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.patch_unembed(x)
