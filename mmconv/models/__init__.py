# Copyright (c) mmconv contributors. All rights reserved.
"""MMDetection modules that pip-installed mmdet lacks: the ViTDet backbone
and its simple feature pyramid, registered in ``mmdet.registry.MODELS``,
and ViTDet's layer-wise lr decay (``OPTIM_WRAPPER_CONSTRUCTORS``),
registered when this package is imported (``custom_imports=dict(
imports=['mmconv.models'])`` in a config)."""
from .layer_decay import ViTLayerDecayOptimizerConstructor, vit_layer_id
from .simple_fpn import LayerNorm2d, SimpleFPN, simple_fpn_strides
from .vit import ViTDet, interpolate_pos_embed

__all__ = [
    'ViTDet', 'SimpleFPN', 'LayerNorm2d', 'interpolate_pos_embed',
    'simple_fpn_strides', 'ViTLayerDecayOptimizerConstructor', 'vit_layer_id'
]
