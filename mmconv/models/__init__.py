# Copyright (c) mmconv contributors. All rights reserved.
"""MMDetection modules that pip-installed mmdet lacks: the ViTDet backbone
and its simple feature pyramid, registered in ``mmdet.registry.MODELS``
when this package is imported (``custom_imports=dict(
imports=['mmconv.models'])`` in a config)."""
from .simple_fpn import LayerNorm2d, SimpleFPN, simple_fpn_strides
from .vit import ViTDet, interpolate_pos_embed

__all__ = [
    'ViTDet', 'SimpleFPN', 'LayerNorm2d', 'interpolate_pos_embed',
    'simple_fpn_strides'
]
