# Copyright (c) mmconv contributors. All rights reserved.
"""Every format mmconv reads: one module of declarations per family,
imported below (**add a format or a family here**).

A family module calls :func:`~mmconv.spec.register` with its
:class:`~mmconv.spec.Family` and :class:`~mmconv.spec.SourceFormat`
declarations; detection, the command line, ``SelfSupPretrained`` and the
hook read the registry, so nothing else changes. Only
:mod:`mmconv.pipeline` imports this package, which imports no torch. Which
module declares what, and how to add a family: README, "Layout".
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
