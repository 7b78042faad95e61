# Copyright (c) mmconv contributors. All rights reserved.
"""Plain Vision Transformer backbone for ViTDet-style detectors.

:class:`ViTDet` is the backbone of "Exploring Plain Vision Transformer
Backbones for Object Detection" (Li et al., 2022): a plain ViT whose blocks
use windowed attention except a few global ones, with optional decomposed
relative position biases, that returns one feature map at stride
``patch_size`` for :class:`~mmconv.models.SimpleFPN`.

Its parameter names are those of timm's ``VisionTransformer`` (the layout
that MAE, DINO, DINOv2, MoCo v3 and iBOT checkpoints use as well), so a
pre-trained state dict loads after dropping the tokens the detector does not
use (``cls_token``, timm's ``reg_token`` / DINOv2's ``register_tokens``,
``mask_token``), the heads, and the class-token slot(s) of ``pos_embed``::

    patch_embed.proj.{weight,bias}     Conv2d(in_channels, C, p, stride=p)
    pos_embed                          (1, gh * gw, C), patch tokens only
                                       (only with use_abs_pos)
    cls_token, reg_token               (1, 1, C), (1, n, C): only with
                                       with_cls_token / num_reg_tokens
    rope_embed.periods                 (head_dim // 4, ): only with use_rope
    blocks.N.norm1.{weight,bias}
    blocks.N.attn.qkv.{weight,bias}    Linear(C, 3C), bias iff qkv_bias
    blocks.N.attn.proj.{weight,bias}
    blocks.N.attn.rel_pos_{h,w}        only with use_rel_pos (not pre-trained)
    blocks.N.ls1.gamma                 only with layer_scale
    blocks.N.norm2.{weight,bias}
    blocks.N.mlp.fc1.{weight,bias}     mlp='mlp':    Linear(C, hidden)
                                       mlp='swiglu': Linear(C, hidden), the
                                       packed [gate; value] projection
    blocks.N.mlp.fc2.{weight,bias}     mlp='mlp':    Linear(hidden, C)
                                       mlp='swiglu': Linear(hidden // 2, C)
    blocks.N.mlp.fc1_{g,x}.{weight,..} mlp='swiglu_unpacked': Linear(C,
                                       hidden) each (gate, value), fc2
                                       Linear(hidden, C)
    blocks.N.ls2.gamma                 only with layer_scale
    norm.{weight,bias}                 only with final_norm

``hidden = int(embed_dim * mlp_ratio)`` in both cases, as in timm; timm's
DINOv2 giant (``SwiGLUPacked``) is ``mlp='swiglu', mlp_ratio=2.66667 * 2``
(fc1 1536 -> 8192, fc2 4096 -> 1536). The official DINOv2 code names the same
two layers ``mlp.w12`` / ``mlp.w3`` (same packing: ``silu(first half) *
second half``), so only a rename is needed.

DINOv3 (``use_abs_pos=False, use_rope=True, with_cls_token=True,
num_reg_tokens=4``, LayerNorm eps 1e-5, layer scale): the class and
register tokens are prepended to the patch tokens and take part in every
attention (not rotated); 2-D RoPE rotates the patch queries and keys; with
every block global the output of block ``i`` (normed with ``final_norm``)
is the official ``get_intermediate_layers(n=[i], reshape=True)``. Windowed
blocks: see :meth:`Attention.forward_seq`. The SwiGLU sizes (S+, L+, H+,
7B) use ``mlp='swiglu_unpacked'`` (DINOv3 ``w1``/``w2``/``w3`` =
``fc1_g``/``fc1_x``/``fc2``; timm's ``SwiGLU`` names).
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor

IntPair = Union[int, Tuple[int, int]]


def _pair(value: IntPair) -> Tuple[int, int]:
    """Return ``(value, value)`` for an int, the pair itself otherwise."""
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def interpolate_pos_embed(pos_embed: Tensor, src_grid: IntPair,
                          dst_grid: IntPair) -> Tensor:
    """Resize a patch-token position embedding to another grid.

    The embedding is laid out as a ``(gh, gw)`` grid in row-major order (the
    order of flattened patch tokens) and resized with
    ``F.interpolate(mode='bicubic', align_corners=False)``, as ViTDet and
    timm do; no resizing happens when the grids are equal.

    Args:
        pos_embed (Tensor): ``(1, gh * gw, C)``, patch tokens only.
        src_grid (int | tuple[int, int]): ``(gh, gw)`` of ``pos_embed``.
        dst_grid (int | tuple[int, int]): ``(h, w)`` wanted.

    Returns:
        Tensor: ``(1, h, w, C)``.
    """
    src_h, src_w = _pair(src_grid)
    dst_h, dst_w = _pair(dst_grid)
    if pos_embed.shape[1] != src_h * src_w:
        raise ValueError(f'pos_embed has {pos_embed.shape[1]} positions, '
                         f'not the {src_h}x{src_w} grid given')
    grid = pos_embed.reshape(1, src_h, src_w, -1)
    if (src_h, src_w) == (dst_h, dst_w):
        return grid
    grid = F.interpolate(
        grid.permute(0, 3, 1, 2),
        size=(dst_h, dst_w),
        mode='bicubic',
        align_corners=False)
    return grid.permute(0, 2, 3, 1)


def rel_pos_table(rel_pos: Tensor, size: int) -> Tensor:
    """Relative position embeddings for every (query, key) pair of one axis.

    Args:
        rel_pos (Tensor): ``(L, head_dim)`` learned embeddings of the
            relative offsets ``-(L // 2) .. L // 2``; linearly resized to
            ``2 * size - 1`` offsets when ``L`` differs (as in ViTDet).
        size (int): number of positions along the axis.

    Returns:
        Tensor: ``(size, size, head_dim)``, entry ``[i, j]`` being the
        embedding of offset ``i - j``.
    """
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(
            rel_pos.t().unsqueeze(0), size=length,
            mode='linear').squeeze(0).t()
    coords = torch.arange(size, device=rel_pos.device)
    offsets = coords[:, None] - coords[None, :] + (size - 1)
    return rel_pos[offsets]


def decomposed_rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor,
                            size: Tuple[int, int]) -> Tensor:
    """ViTDet's decomposed relative position bias of an attention map.

    ``bias[(i, j), (k, l)] = q[i, j] . Rh[i - k] + q[i, j] . Rw[j - l]``
    for the unscaled queries, added to the scaled ``q . k`` logits.

    Args:
        q (Tensor): ``(B, heads, H * W, head_dim)`` queries.
        rel_pos_h (Tensor): ``(Lh, head_dim)`` embeddings of the height axis.
        rel_pos_w (Tensor): ``(Lw, head_dim)`` embeddings of the width axis.
        size (tuple[int, int]): ``(H, W)`` of the token grid.

    Returns:
        Tensor: ``(B, heads, H * W, H * W)`` additive bias.
    """
    height, width = size
    table_h = rel_pos_table(rel_pos_h, height).to(q.dtype)
    table_w = rel_pos_table(rel_pos_w, width).to(q.dtype)
    batch, heads, _, dim = q.shape
    grid_q = q.reshape(batch, heads, height, width, dim)
    bias_h = torch.einsum('bnhwc,hkc->bnhwk', grid_q, table_h)
    bias_w = torch.einsum('bnhwc,wkc->bnhwk', grid_q, table_w)
    bias = bias_h[..., :, None] + bias_w[..., None, :]
    return bias.reshape(batch, heads, height * width, height * width)


def rope_periods(head_dim: int, base: float = 100.0) -> Tensor:
    """DINOv3's RoPE periods, ``base ** (2 * i / (head_dim / 2))`` for
    ``i < head_dim / 4`` (fp32), as its ``RopePositionEmbedding`` computes
    them with ``base`` (the released models: 100)."""
    if head_dim % 4:
        raise ValueError(f'RoPE needs a head dimension divisible by 4, got '
                         f'{head_dim}')
    index = torch.arange(head_dim // 4, dtype=torch.float32)
    return base**(2 * index / (head_dim // 2))


def rope_sincos(periods: Tensor, size: Tuple[int, int]) -> Tuple[Tensor,
                                                                 Tensor]:
    """DINOv3's axial 2-D RoPE angles of a ``(H, W)`` token grid.

    Patch centres are normalised separately per axis to ``[-1, 1]``
    (``normalize_coords='separate'``, no training-time shift/jitter/rescale);
    the angle of axis ``a`` and frequency ``i`` is ``2 pi c_a / period_i``,
    laid out ``[h freqs, w freqs]`` and tiled twice (``rotate_half`` pairs).

    Args:
        periods (Tensor): ``(head_dim // 4, )`` periods.
        size (tuple[int, int]): ``(H, W)`` of the grid.

    Returns:
        tuple[Tensor, Tensor]: ``(sin, cos)``, each ``(H * W, head_dim)``
        fp32, row-major token order.
    """
    height, width = size
    dd = dict(device=periods.device, dtype=torch.float32)
    coords_h = torch.arange(0.5, height, **dd) / height
    coords_w = torch.arange(0.5, width, **dd) / width
    coords = torch.stack(
        torch.meshgrid(coords_h, coords_w, indexing='ij'), dim=-1)
    coords = 2.0 * coords.flatten(0, 1) - 1.0
    angles = 2 * math.pi * coords[:, :, None] / periods.float()[None, None]
    angles = angles.flatten(1, 2).tile(2)
    return torch.sin(angles), torch.cos(angles)


def rope_apply(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate ``x`` (``[..., D]``) by the angles ``sin``/``cos`` with the
    ``rotate_half`` pairing ``(i, i + D/2)``, in fp32, back in ``x``'s
    dtype."""
    dtype = x.dtype
    x = x.float()
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x * cos + rotated * sin).to(dtype)


class RopeEmbed(nn.Module):
    """Holds DINOv3's RoPE ``periods`` buffer (persistent, as in the
    official model, so a checkpoint's periods are loaded with it).

    Args:
        head_dim (int): channels per attention head.
        base (float): period base. Defaults to 100.
    """

    def __init__(self, head_dim: int, base: float = 100.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.register_buffer('periods', rope_periods(head_dim, base))

    def forward(self, size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """``(sin, cos)`` of a ``(H, W)`` grid (see :func:`rope_sincos`)."""
        return rope_sincos(self.periods, size)


def window_partition(x: Tensor,
                     window_size: int) -> Tuple[Tensor, Tuple[int, int]]:
    """Split a token grid into non-overlapping windows.

    The grid is zero-padded at the bottom and right to a multiple of
    ``window_size``; the padded tokens take part in the attention of their
    window (no masking), as in ViTDet.

    Args:
        x (Tensor): ``(B, H, W, C)``.
        window_size (int): side of a window in tokens.

    Returns:
        tuple[Tensor, tuple[int, int]]: ``(B * nW, ws, ws, C)`` windows and
        the padded ``(Hp, Wp)``.
    """
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.reshape(batch, padded_h // window_size, window_size,
                  padded_w // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size,
                                                  window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(windows: Tensor, window_size: int,
                       padded_size: Tuple[int, int],
                       size: Tuple[int, int]) -> Tensor:
    """Reassemble windows into a token grid and drop the padding.

    Args:
        windows (Tensor): ``(B * nW, ws, ws, C)``.
        window_size (int): side of a window in tokens.
        padded_size (tuple[int, int]): ``(Hp, Wp)`` from
            :func:`window_partition`.
        size (tuple[int, int]): ``(H, W)`` before padding.

    Returns:
        Tensor: ``(B, H, W, C)``.
    """
    padded_h, padded_w = padded_size
    height, width = size
    rows, cols = padded_h // window_size, padded_w // window_size
    batch = windows.shape[0] // (rows * cols)
    x = windows.reshape(batch, rows, cols, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width]
    return x.contiguous()


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (CaiT), named as in timm.

    Args:
        dim (int): number of channels.
        init_value (float): initial value of every entry of ``gamma``.
    """

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, ), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        """Scale the last dimension of ``x`` by ``gamma``."""
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer MLP ``fc2(act(fc1(x)))``.

    Args:
        dim (int): input and output channels.
        hidden_dim (int): hidden channels.
        act_cfg (dict): activation config. Defaults to exact GELU.
    """

    def __init__(self,
                 dim: int,
                 hidden_dim: int,
                 act_cfg: dict = dict(type='GELU')) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to the last dimension of ``x``."""
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Packed SwiGLU feed-forward ``fc2(silu(a) * b)``, ``[a; b] = fc1(x)``.

    The layout of timm's ``SwiGLUPacked`` and of DINOv2's ``SwiGLUFFN``
    (there ``w12`` / ``w3``).

    Args:
        dim (int): input and output channels.
        hidden_dim (int): output channels of ``fc1`` (both halves); must be
            even.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError('SwiGLU needs an even hidden dimension, got '
                             f'{hidden_dim}')
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim // 2, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the gated feed-forward to the last dimension of ``x``."""
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * value)


class SwiGLUUnpacked(nn.Module):
    """SwiGLU feed-forward with separate projections, ``fc2(silu(fc1_g(x))
    * fc1_x(x))``: timm's ``SwiGLU`` names; DINOv3's ``SwiGLUFFN`` is the
    same with ``w1`` = ``fc1_g`` (gate), ``w2`` = ``fc1_x``, ``w3`` =
    ``fc2``.

    Args:
        dim (int): input and output channels.
        hidden_dim (int): output channels of ``fc1_g`` and ``fc1_x`` each.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden_dim)
        self.fc1_x = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the gated feed-forward to the last dimension of ``x``."""
        return self.fc2(F.silu(self.fc1_g(x)) * self.fc1_x(x))


def _window_keys(x: Tensor, size: Tuple[int, int],
                 window_size: int) -> Tuple[Tensor, Tuple[int, int]]:
    """``(B, heads, H * W, d)`` -> ``(B * nW, heads, ws * ws, d)`` windows
    of the zero-padded grid (see :func:`window_partition`)."""
    batch, heads, _, dim = x.shape
    height, width = size
    grid = x.permute(0, 2, 1, 3).reshape(batch, height, width, heads * dim)
    windows, padded = window_partition(grid, window_size)
    windows = windows.reshape(-1, window_size * window_size, heads, dim)
    return windows.transpose(1, 2), padded


class Attention(nn.Module):
    """Multi-head self-attention on a token grid.

    Args:
        dim (int): channels.
        num_heads (int): attention heads.
        qkv_bias (bool): bias in the ``qkv`` projection.
        use_rel_pos (bool): add ViTDet's decomposed relative position bias.
        rel_pos_size (tuple[int, int], optional): ``(H, W)`` the relative
            position tables are sized for (``2 * H - 1`` and ``2 * W - 1``
            rows); other grids interpolate them. Required with
            ``use_rel_pos``.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 qkv_bias: bool = True,
                 use_rel_pos: bool = False,
                 rel_pos_size: Optional[Tuple[int, int]] = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dim {dim} is not a multiple of '
                             f'num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if rel_pos_size is None:
                raise ValueError('use_rel_pos needs rel_pos_size')
            height, width = rel_pos_size
            self.rel_pos_h = nn.Parameter(
                torch.zeros(2 * height - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(
                torch.zeros(2 * width - 1, self.head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """Attend over all tokens of each grid.

        Args:
            x (Tensor): ``(B, H, W, C)``.

        Returns:
            Tensor: ``(B, H, W, C)``.
        """
        batch, height, width, channels = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads,
                                  self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w,
                                           (height, width))
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x.transpose(1, 2).reshape(batch, height, width, channels)
        return self.proj(x)

    def forward_seq(self, x: Tensor, size: Tuple[int, int], num_prefix: int,
                    rope: Optional[Tuple[Tensor, Tensor]],
                    window_size: int) -> Tensor:
        """Attend over a token sequence ``[prefix tokens, patch grid]``.

        The ``num_prefix`` leading tokens (class and register tokens) are
        not rotated and take part in every attention. Global
        (``window_size`` 0): every token attends to every token, DINOv3's
        attention. Windowed: each patch token attends to the prefix tokens
        and the valid tokens of its window (padding masked out); the prefix
        tokens attend to every token. RoPE (``rope``, the whole grid's
        angles) rotates patch queries and keys before windowing, so
        positions are those of the whole image.

        Args:
            x (Tensor): ``(B, num_prefix + H * W, C)``.
            size (tuple[int, int]): ``(H, W)`` of the patch grid.
            num_prefix (int): leading tokens that are not patches.
            rope (tuple[Tensor, Tensor], optional): ``(sin, cos)``, each
                ``(H * W, head_dim)``.
            window_size (int): window side; 0 for global attention.

        Returns:
            Tensor: ``(B, num_prefix + H * W, C)``.
        """
        batch, tokens, channels = x.shape
        height, width = size
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads,
                                  self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if rope is not None:
            sin, cos = rope
            q = torch.cat([q[:, :, :num_prefix],
                           rope_apply(q[:, :, num_prefix:], sin, cos)], 2)
            k = torch.cat([k[:, :, :num_prefix],
                           rope_apply(k[:, :, num_prefix:], sin, cos)], 2)
        if window_size == 0:
            bias = None
            if self.use_rel_pos:
                bias = decomposed_rel_pos_bias(
                    q[:, :, num_prefix:], self.rel_pos_h, self.rel_pos_w,
                    (height, width))
                bias = F.pad(bias, (num_prefix, 0, num_prefix, 0))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            out = out.transpose(1, 2).reshape(batch, tokens, channels)
            return self.proj(out)
        # windowed: patch queries see the prefix and their window
        qw, padded = _window_keys(q[:, :, num_prefix:], size, window_size)
        kw, _ = _window_keys(k[:, :, num_prefix:], size, window_size)
        vw, _ = _window_keys(v[:, :, num_prefix:], size, window_size)
        windows = qw.shape[0] // batch
        valid = window_partition(
            x.new_ones(1, height, width, 1), window_size)[0]
        valid = valid.reshape(windows, -1).repeat(batch, 1) > 0
        if num_prefix:
            kp = k[:, :, :num_prefix].repeat_interleave(windows, dim=0)
            vp = v[:, :, :num_prefix].repeat_interleave(windows, dim=0)
            kw = torch.cat([kp, kw], dim=2)
            vw = torch.cat([vp, vw], dim=2)
            valid = F.pad(valid, (num_prefix, 0), value=True)
        bias = None
        if height % window_size or width % window_size:  # padded: mask
            bias = torch.zeros(valid.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~valid, float('-inf'))[:, None, None]
        if self.use_rel_pos:
            rel = decomposed_rel_pos_bias(qw, self.rel_pos_h, self.rel_pos_w,
                                          (window_size, window_size))
            rel = F.pad(rel, (num_prefix, 0))
            bias = rel if bias is None else rel + bias
        out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=bias)
        out = out.transpose(1, 2).reshape(-1, window_size, window_size,
                                          channels)
        out = window_unpartition(out, window_size, padded, size)
        out = out.reshape(batch, height * width, channels)
        if num_prefix:
            prefix = F.scaled_dot_product_attention(q[:, :, :num_prefix], k,
                                                    v)
            prefix = prefix.transpose(1, 2).reshape(batch, num_prefix,
                                                    channels)
            out = torch.cat([prefix, out], dim=1)
        return self.proj(out)


class Block(nn.Module):
    """Transformer block (pre-norm), global or windowed attention.

    Args:
        dim (int): channels.
        num_heads (int): attention heads.
        mlp_ratio (float): ``int(dim * mlp_ratio)`` hidden channels.
        qkv_bias (bool): bias in the ``qkv`` projection.
        layer_scale (float, optional): LayerScale init value; None for no
            LayerScale.
        mlp (str): ``'mlp'`` (``act_cfg`` MLP), ``'swiglu'`` (packed) or
            ``'swiglu_unpacked'``.
        drop_path (float): stochastic depth rate of both residual branches.
        window_size (int): windowed attention with this window side; 0 for
            global attention.
        use_rel_pos (bool): decomposed relative position bias.
        rel_pos_size (tuple[int, int], optional): grid the relative position
            tables of a global block are sized for (windowed blocks use the
            window).
        norm_cfg (dict): normalisation config.
        act_cfg (dict): activation config of ``mlp='mlp'``.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 layer_scale: Optional[float] = None,
                 mlp: str = 'mlp',
                 drop_path: float = 0.0,
                 window_size: int = 0,
                 use_rel_pos: bool = False,
                 rel_pos_size: Optional[Tuple[int, int]] = None,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU')) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = build_norm_layer(norm_cfg, dim)[1]
        self.attn = Attention(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_size=(window_size, window_size)
            if window_size > 0 else rel_pos_size)
        self.ls1 = (
            LayerScale(dim, layer_scale)
            if layer_scale is not None else nn.Identity())
        self.drop_path = DropPath(drop_path) if drop_path > 0 else (
            nn.Identity())
        self.norm2 = build_norm_layer(norm_cfg, dim)[1]
        hidden_dim = int(dim * mlp_ratio)
        if mlp == 'mlp':
            self.mlp = Mlp(dim, hidden_dim, act_cfg)
        elif mlp == 'swiglu':
            self.mlp = SwiGLU(dim, hidden_dim)
        elif mlp == 'swiglu_unpacked':
            self.mlp = SwiGLUUnpacked(dim, hidden_dim)
        else:
            raise ValueError("mlp must be 'mlp' or 'swiglu' (packed) or "
                             f"'swiglu_unpacked', got {mlp!r}")
        self.ls2 = (
            LayerScale(dim, layer_scale)
            if layer_scale is not None else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to a ``(B, H, W, C)`` token grid."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = x.shape[1:3]
            x, padded_size = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded_size, size)
        else:
            x = self.attn(x)
        x = shortcut + self.drop_path(self.ls1(x))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def forward_seq(self, x: Tensor, size: Tuple[int, int], num_prefix: int,
                    rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """Apply the block to a ``(B, num_prefix + H * W, C)`` sequence of
        prefix tokens and a patch grid (see :meth:`Attention.forward_seq`).
        """
        attn = self.attn.forward_seq(self.norm1(x), size, num_prefix, rope,
                                     self.window_size)
        x = x + self.drop_path(self.ls1(attn))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection, ``(B, 3, H, W) -> (B, C, h, w)``.

    Args:
        patch_size (int): patch side (kernel and stride).
        in_channels (int): image channels.
        embed_dim (int): token channels.
    """

    def __init__(self, patch_size: int, in_channels: int,
                 embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_channels, embed_dim, kernel_size=patch_size,
            stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """Project the patches of an image batch."""
        return self.proj(x)


@MODELS.register_module()
class ViTDet(BaseModule):
    """Plain ViT backbone of ViTDet with timm parameter names.

    The input is zero-padded at the bottom and right to a multiple of
    ``patch_size`` (the value MMDetection's data preprocessor pads with), so
    every pixel is covered and the output has ``ceil(H / p) x ceil(W / p)``
    positions; with ``pad_size_divisor`` (or a fixed ``Pad`` size) a
    multiple of ``patch_size`` nothing is added here. The absolute position
    embedding, learned for the ``img_size // patch_size`` grid, is
    bicubic-interpolated (``align_corners=False``) to the input's grid when
    the two differ (see :func:`interpolate_pos_embed`). Blocks whose index
    is in ``global_attn_indexes`` (or every block when ``window_size`` is 0)
    attend globally, the others within ``window_size`` windows of the padded
    grid.

    Args:
        img_size (int | tuple[int, int]): pre-training image size, which
            sets the ``pos_embed`` grid. Defaults to 224.
        patch_size (int): 16, or 14 for DINOv2. Defaults to 16.
        in_channels (int): image channels. Defaults to 3.
        embed_dim (int): token channels. Defaults to 768.
        depth (int): number of blocks. Defaults to 12.
        num_heads (int): attention heads. Defaults to 12.
        mlp_ratio (float): hidden width ``int(embed_dim * mlp_ratio)`` of
            ``mlp.fc1`` (both halves for SwiGLU). Defaults to 4.
        qkv_bias (bool): bias in ``attn.qkv``. Defaults to True.
        layer_scale (float, optional): LayerScale init value (``ls1`` /
            ``ls2``, DINOv2: 1e-5); None for none. Defaults to None.
        mlp (str): ``'mlp'``, ``'swiglu'`` (packed ``fc1`` = ``[gate;
            value]``, timm ``SwiGLUPacked`` / DINOv2 ``w12``) or
            ``'swiglu_unpacked'`` (``fc1_g`` gate, ``fc1_x``, ``fc2``:
            timm ``SwiGLU`` / DINOv3 ``w1``, ``w2``, ``w3``; each of
            ``fc1_g`` / ``fc1_x`` is ``int(embed_dim * mlp_ratio)`` wide).
            Defaults to ``'mlp'``.
        drop_path_rate (float): stochastic depth rate of the last block,
            increasing linearly from 0 at the first. Defaults to 0.
        window_size (int): window side in tokens of the non-global blocks;
            0 makes every block global. Defaults to 14.
        global_attn_indexes (Sequence[int]): blocks with global attention.
            Defaults to ``(2, 5, 8, 11)`` (ViT-B).
        use_rel_pos (bool): decomposed relative position bias
            (``attn.rel_pos_h`` / ``attn.rel_pos_w``, zero-initialised; not
            in pre-trained files). Defaults to True.
        rel_pos_img_size (int | tuple[int, int], optional): image size the
            relative position tables of the global blocks are sized for
            (ViTDet: the detection input, 1024); other inputs interpolate
            them linearly. None uses ``img_size``. Windowed blocks are sized
            for their window. Defaults to None.
        final_norm (bool): apply ``norm`` to the output (ViTDet does not;
            DINOv3's ``get_intermediate_layers(norm=True)`` does). Defaults
            to False.
        use_abs_pos (bool): learned absolute position embedding
            ``pos_embed``. Defaults to True (False for DINOv3).
        use_rope (bool): DINOv3's 2-D RoPE on the patch tokens' queries and
            keys (``rope_embed.periods``, a persistent buffer: a
            checkpoint's periods replace the computed ones). Defaults to
            False.
        rope_base (float): RoPE period base. Defaults to 100 (DINOv3).
        with_cls_token (bool): hold a class token ``cls_token`` ``(1, 1,
            C)`` that takes part in attention (not rotated, not output).
            Defaults to False.
        num_reg_tokens (int): register (DINOv3 storage) tokens ``reg_token``
            ``(1, n, C)`` after the class token, taking part in attention
            likewise. Defaults to 0.
        out_indices (Sequence[int], optional): blocks whose outputs are
            returned (negative: from the end), each normed when
            ``final_norm``; None: the last block only. Defaults to None.
        frozen (bool): freeze every parameter (``requires_grad=False``)
            and keep the module in eval mode (no drop path) while the
            detector trains (DINOv3 is meant to be used frozen). Defaults
            to False.
        norm_cfg (dict): normalisation of the blocks and ``norm``. Defaults
            to ``dict(type='LN', eps=1e-6)``.
        act_cfg (dict): activation of ``mlp='mlp'``. Defaults to GELU.
        with_cp (bool): activation checkpointing of every block in
            training. Defaults to False.
        init_cfg (dict | list[dict], optional): initialisation config, e.g.
            ``dict(type='Pretrained', checkpoint=...)``. Without one the
            weights are initialised as in timm (truncated normal 0.02).
    """

    def __init__(self,
                 img_size: IntPair = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 embed_dim: int = 768,
                 depth: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 layer_scale: Optional[float] = None,
                 mlp: str = 'mlp',
                 drop_path_rate: float = 0.0,
                 window_size: int = 14,
                 global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
                 use_rel_pos: bool = True,
                 rel_pos_img_size: Optional[IntPair] = None,
                 final_norm: bool = False,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU'),
                 with_cp: bool = False,
                 use_abs_pos: bool = True,
                 use_rope: bool = False,
                 rope_base: float = 100.0,
                 with_cls_token: bool = False,
                 num_reg_tokens: int = 0,
                 out_indices: Optional[Sequence[int]] = None,
                 frozen: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        global_attn_indexes = tuple(int(i) for i in global_attn_indexes)
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f'global_attn_indexes {bad} out of range for '
                             f'depth {depth}')
        if window_size < 0:
            raise ValueError(f'window_size must be >= 0, got {window_size}')
        if num_reg_tokens < 0:
            raise ValueError('num_reg_tokens must be >= 0, got '
                             f'{num_reg_tokens}')
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} is not a multiple of '
                             f'num_heads {num_heads}')
        if out_indices is None:
            out_indices = (depth - 1, ) if depth else ()
        self.out_indices = tuple(
            int(i) + depth if int(i) < 0 else int(i) for i in out_indices)
        bad = [i for i in self.out_indices if not 0 <= i < depth]
        if bad or (depth and not self.out_indices):
            raise ValueError(f'out_indices {tuple(out_indices)} out of range '
                             f'for depth {depth}')
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.window_size = window_size
        self.global_attn_indexes = global_attn_indexes
        self.final_norm = final_norm
        self.with_cp = with_cp
        self.use_abs_pos = use_abs_pos
        self.use_rope = use_rope
        self.with_cls_token = with_cls_token
        self.num_reg_tokens = num_reg_tokens
        self.num_prefix_tokens = int(with_cls_token) + num_reg_tokens
        self.pos_grid = (self.img_size[0] // patch_size,
                         self.img_size[1] // patch_size)
        rel_img = _pair(rel_pos_img_size or img_size)
        rel_pos_size = (rel_img[0] // patch_size, rel_img[1] // patch_size)

        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        if use_abs_pos:
            self.pos_embed = nn.Parameter(
                torch.zeros(1, self.pos_grid[0] * self.pos_grid[1],
                            embed_dim))
        if with_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if num_reg_tokens:
            self.reg_token = nn.Parameter(
                torch.zeros(1, num_reg_tokens, embed_dim))
        if use_rope:
            self.rope_embed = RopeEmbed(embed_dim // num_heads, rope_base)
        rates = torch.linspace(0, drop_path_rate, depth,
                               device='cpu').tolist()
        self.blocks = nn.ModuleList([
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                layer_scale=layer_scale,
                mlp=mlp,
                drop_path=rates[i],
                window_size=0 if i in global_attn_indexes else window_size,
                use_rel_pos=use_rel_pos,
                rel_pos_size=rel_pos_size,
                norm_cfg=norm_cfg,
                act_cfg=act_cfg) for i in range(depth)
        ])
        if final_norm:
            self.norm = build_norm_layer(norm_cfg, embed_dim)[1]
        self._init_default_weights()
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)

    def train(self, mode: bool = True) -> 'ViTDet':
        """Set training mode; a ``frozen`` backbone stays in eval mode."""
        return super().train(mode and not self.frozen)

    def _init_default_weights(self) -> None:
        """timm's initialisation; a ``Pretrained`` init_cfg overrides it."""
        for name in ('pos_embed', 'cls_token', 'reg_token'):
            if hasattr(self, name):
                nn.init.trunc_normal_(getattr(self, name), std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_pos_embed(self, grid: Tuple[int, int]) -> Tensor:
        """``pos_embed`` as a ``(1, h, w, C)`` grid for a ``grid`` input."""
        return interpolate_pos_embed(self.pos_embed, self.pos_grid, grid)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Extract the feature map(s).

        Args:
            x (Tensor): ``(B, in_channels, H, W)`` images.

        Returns:
            tuple[Tensor]: one ``(B, embed_dim, ceil(H / p), ceil(W / p))``
            map (stride ``patch_size``) per ``out_indices`` entry (one by
            default).
        """
        height, width = x.shape[-2:]
        pad_h = -height % self.patch_size
        pad_w = -width % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        if self.use_abs_pos:
            x = x + self.get_pos_embed(x.shape[1:3]).to(x.dtype)
        if not self.depth:  # the embedding itself
            x = self.norm(x) if self.final_norm else x
            return (x.permute(0, 3, 1, 2).contiguous(), )
        if self.use_rope or self.num_prefix_tokens:
            return self._forward_seq(x)
        outs = []
        for i, block in enumerate(self.blocks):
            if self.with_cp and self.training and x.requires_grad:
                x = checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i in self.out_indices:
                out = self.norm(x) if self.final_norm else x
                outs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    def _forward_seq(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The blocks on ``[cls token, register tokens, patch tokens]``
        (DINOv3's token sequence), RoPE on the patch tokens."""
        batch, height, width, channels = x.shape
        size = (height, width)
        prefix = []
        if self.with_cls_token:
            prefix.append(self.cls_token.expand(batch, -1, -1))
        if self.num_reg_tokens:
            prefix.append(self.reg_token.expand(batch, -1, -1))
        x = torch.cat(prefix + [x.reshape(batch, height * width, channels)],
                      dim=1)
        rope = self.rope_embed(size) if self.use_rope else None
        num_prefix = self.num_prefix_tokens
        outs = []
        for i, block in enumerate(self.blocks):
            if self.with_cp and self.training and x.requires_grad:
                x = checkpoint.checkpoint(block.forward_seq, x, size,
                                          num_prefix, rope,
                                          use_reentrant=False)
            else:
                x = block.forward_seq(x, size, num_prefix, rope)
            if i in self.out_indices:
                out = self.norm(x) if self.final_norm else x
                out = out[:, num_prefix:].reshape(batch, height, width,
                                                  channels)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
