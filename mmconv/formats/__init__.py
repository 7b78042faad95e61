# Copyright (c) mmconv contributors. All rights reserved.
"""Every format mmconv reads: **add a format or a family here.**

One module per family, each only declarations (:mod:`mmconv.spec`) plus
the named surgery functions beside its tables:

==================  ==========================================================
module              declares
==================  ==========================================================
:mod:`.resnet`      the ResNet family (canonical names, style/input
                    decisions) and the ``detectron2``/``torchvision`` targets
:mod:`.selfsup`     self-supervised ResNets (MoCo, SwAV, DenseCL, SimSiam,
                    Barlow Twins, VICReg, DINO, VISSL, mmpretrain),
                    torchvision, MMDetection backbones
:mod:`.detectron2`  detectron2/detrex ResNets, Caffe2/Detectron1 blobs
:mod:`.detr`        DETR, Deformable, Conditional, DN-Deformable DETR
:mod:`.vit`         self-supervised ViTs (MAE, DINO, DINOv2 with registers,
                    iBOT, MoCo v3, mmpretrain, timm) -> the ViTDet backbone
                    of :mod:`mmconv.models`
:mod:`.convnext`    ConvNeXt v1/v2 (official, FCMAE, timm, mmpretrain)
                    -> ``mmpretrain.ConvNeXt``
:mod:`.swin`        Swin v1/V2 (official, SimMIM, timm) -> MMDetection's
                    ``SwinTransformer`` / mmpretrain's ``SwinTransformerV2``
==================  ==========================================================

A new family is one new module that calls :func:`~mmconv.spec.register`
with its :class:`~mmconv.spec.Family` and :class:`~mmconv.spec.SourceFormat`
declarations, imported below; nothing else changes: detection, the command
line (``--from``, ``formats``, ``inspect``), ``SelfSupPretrained`` and the
hook read the registry. Importing this package imports no torch; only
:mod:`mmconv.pipeline` imports it (the engine reads the registry from
:mod:`mmconv.spec`).
"""
from ..spec import (FAMILIES, FORMATS, OPTIONS, TARGETS, Family, Rule,
                    SourceFormat, Surgery, Target, format_names, get_format,
                    get_target, register, target_names, unregister)

#: MMDetection: canonical names are its names; ``{'state_dict', 'meta'}``.
MMDET = Target('mmdet', 'MMDetection')
register(MMDET)

from . import resnet, selfsup, detectron2, detr, vit  # noqa: E402,F401,I001
from . import convnext  # noqa: E402,F401,I001
from . import swin  # noqa: E402,F401,I001
from . import detrex  # noqa: E402,F401,I001
from . import dinov3  # noqa: E402,F401,I001


__all__ = [
    'FAMILIES', 'FORMATS', 'OPTIONS', 'TARGETS', 'Family', 'Rule',
    'SourceFormat', 'Surgery', 'Target', 'MMDET', 'format_names',
    'get_format', 'get_target', 'register', 'target_names', 'unregister'
]
