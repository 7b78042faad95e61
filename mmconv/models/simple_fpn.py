# Copyright (c) mmconv contributors. All rights reserved.
"""ViTDet's simple feature pyramid on the single map of a plain ViT."""
from typing import List, Optional, Sequence, Tuple, Union

import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from mmengine.registry import MODELS as MMENGINE_MODELS
from torch import Tensor

SUPPORTED_SCALES = (4.0, 2.0, 1.0, 0.5)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map.

    Registered as ``'LN2d'`` in MMEngine's root ``MODELS`` registry (where
    MMCV keeps its own norm layers), so ``norm_cfg=dict(type='LN2d')``
    resolves from every scope (mmdet's included) and without a default
    scope. Its abbreviation for :class:`~mmcv.cnn.ConvModule` is ``'ln'``.

    Args:
        num_channels (int): channels ``C``.
        eps (float): added to the variance. Defaults to 1e-6 (as in
            detectron2's ViTDet; MMCV's ``build_norm_layer`` uses 1e-5 when a
            config gives no ``eps``).
    """

    _abbr_ = 'ln'

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each position of ``x`` over its channels."""
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


if 'LN2d' not in MMENGINE_MODELS.module_dict:
    MMENGINE_MODELS.register_module('LN2d', module=LayerNorm2d)


def simple_fpn_strides(patch_size: int,
                       scale_factors: Sequence[float] = SUPPORTED_SCALES,
                       num_outs: int = 5) -> List[Union[int, float]]:
    """Strides of :class:`SimpleFPN`'s outputs, high resolution first.

    Level ``i < len(scale_factors)`` has stride ``patch_size /
    scale_factors[i]``; each extra level doubles the last one. Integral
    strides are returned as ints: ``[4, 8, 16, 32, 64]`` for patch 16 and
    ``[3.5, 7, 14, 28, 56]`` for patch 14.

    Args:
        patch_size (int): stride of the backbone's map.
        scale_factors (Sequence[float]): as in :class:`SimpleFPN`.
        num_outs (int): as in :class:`SimpleFPN`.

    Returns:
        list[int | float]: one stride per output.
    """
    strides = [patch_size / float(s) for s in scale_factors]
    while len(strides) < num_outs:
        strides.append(strides[-1] * 2)
    return [int(s) if float(s).is_integer() else s for s in strides]


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """Simple feature pyramid of ViTDet (Li et al., 2022).

    From the backbone's single map (stride ``p``, ``backbone_channel``
    channels) each scale factor builds one level:

    - 4: ``ConvTranspose2d(C, C/2, 2, 2)``, norm, GELU,
      ``ConvTranspose2d(C/2, C/4, 2, 2)``;
    - 2: ``ConvTranspose2d(C, C/2, 2, 2)``;
    - 1: identity;
    - 0.5: ``MaxPool2d(2, 2)``;

    attribute ``fpn{i + 1}`` for the ``i``-th factor (the names of
    MMDetection's ``projects/ViTDet``). Each level then goes through a 1x1
    (``lateral_convs``) and a 3x3 (``fpn_convs``) :class:`ConvModule` with
    ``norm_cfg`` to ``out_channels`` (no bias when normalised), and levels
    past the factors are ``max_pool2d(kernel 1, stride 2)`` of the last one.
    Outputs are ordered high resolution first, as MMDetection's FPN necks,
    with strides :func:`simple_fpn_strides` (``[4, 8, 16, 32, 64]`` for
    ``p = 16``, ``[3.5, 7, 14, 28, 56]`` for ``p = 14``) for the
    ``featmap_strides`` / anchor ``strides`` of the heads.

    Args:
        backbone_channel (int): channels of the backbone's map.
        out_channels (int): channels of every output. Defaults to 256.
        in_channels (list[int], optional): channels entering each lateral
            conv; derived from ``backbone_channel`` (``C/4, C/2, C, C`` for
            the default factors) when None, and checked against that
            otherwise. Defaults to None.
        scale_factors (Sequence[float]): strictly decreasing subset of
            ``(4, 2, 1, 0.5)``. Defaults to all four.
        num_outs (int): outputs, ``>= len(scale_factors)``. Defaults to 5.
        conv_cfg (dict, optional): conv config of the ConvModules.
        norm_cfg (dict, optional): norm of the ConvModules and of the
            scale-4 branch; None for no norm (convs then have bias).
            Defaults to ``dict(type='LN2d', eps=1e-6)``.
        act_cfg (dict, optional): activation after the ConvModules.
            Defaults to None (none, as in ViTDet).
        init_cfg (dict | list[dict], optional): initialisation config.
            Defaults to None: ConvModule's own Kaiming init for the convs,
            PyTorch's default for the transposed convs.
    """

    def __init__(self,
                 backbone_channel: int,
                 out_channels: int = 256,
                 in_channels: Optional[List[int]] = None,
                 scale_factors: Sequence[float] = SUPPORTED_SCALES,
                 num_outs: int = 5,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = dict(type='LN2d', eps=1e-6),
                 act_cfg: Optional[dict] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None
                 ) -> None:
        super().__init__(init_cfg=init_cfg)
        scale_factors = tuple(float(s) for s in scale_factors)
        unsupported = [s for s in scale_factors if s not in SUPPORTED_SCALES]
        if unsupported or not scale_factors:
            raise ValueError(f'scale_factors must be taken from '
                             f'{SUPPORTED_SCALES}, got {scale_factors}')
        if any(a <= b for a, b in zip(scale_factors, scale_factors[1:])):
            raise ValueError('scale_factors must be strictly decreasing '
                             f'(high resolution first), got {scale_factors}')
        if num_outs < len(scale_factors):
            raise ValueError(f'num_outs {num_outs} < {len(scale_factors)} '
                             'scale factors')
        dim = backbone_channel
        widths = {4.0: dim // 4, 2.0: dim // 2, 1.0: dim, 0.5: dim}
        derived = [widths[s] for s in scale_factors]
        if in_channels is not None and list(in_channels) != derived:
            raise ValueError(f'in_channels {list(in_channels)} do not match '
                             f'{derived} of backbone_channel {dim} with '
                             f'scale_factors {scale_factors}')
        self.backbone_channel = dim
        self.in_channels = derived
        self.out_channels = out_channels
        self.scale_factors = scale_factors
        self.num_outs = num_outs

        for i, scale in enumerate(scale_factors):
            if scale == 4.0:
                mid_norm = (
                    build_norm_layer(norm_cfg, dim // 2)[1]
                    if norm_cfg is not None else nn.Identity())
                layers = [
                    nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), mid_norm,
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)
                ]
            elif scale == 2.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)]
            elif scale == 1.0:
                layers = [nn.Identity()]
            else:
                layers = [nn.MaxPool2d(kernel_size=2, stride=2)]
            self.add_module(f'fpn{i + 1}', nn.Sequential(*layers))

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for width in derived:
            self.lateral_convs.append(
                ConvModule(
                    width,
                    out_channels,
                    1,
                    conv_cfg=conv_cfg,
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                    inplace=False))
            self.fpn_convs.append(
                ConvModule(
                    out_channels,
                    out_channels,
                    3,
                    padding=1,
                    conv_cfg=conv_cfg,
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                    inplace=False))

    def forward(self, inputs: Union[Tensor, Sequence[Tensor]]
                ) -> Tuple[Tensor, ...]:
        """Build the pyramid.

        Args:
            inputs (Tensor | Sequence[Tensor]): the backbone's map, or a
                tuple whose last element is it (as :class:`ViTDet`
                returns).

        Returns:
            tuple[Tensor]: ``num_outs`` maps of ``out_channels`` channels,
            high resolution first.
        """
        x = inputs if isinstance(inputs, Tensor) else inputs[-1]
        outs = []
        for i in range(len(self.scale_factors)):
            level = getattr(self, f'fpn{i + 1}')(x)
            outs.append(self.fpn_convs[i](self.lateral_convs[i](level)))
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
