# Copyright (c) mmconv contributors. All rights reserved.
"""Self-supervised checkpoint -> MMDetection ResNet backbone.

Drop-in for MMDetection's ``tools/model_converters/selfsup2mmdet.py``::

    python tools/model_converters/selfsup2mmdet.py \
        moco_v2_800ep_pretrain.pth.tar mocov2_r50.pth --selfsup moco

``--selfsup`` also takes mocov3, swav, densecl, simsiam, barlowtwins, vicreg,
dino, vissl, mmpretrain, torchvision, mmdet, and defaults to ``auto``. Use the
output with ``init_cfg=dict(type='Pretrained', checkpoint='mocov2_r50.pth')``.
"""
import os
import sys

# A converter script builds no MMEngine objects: skip registering mmconv's
# initializer/hook with MMEngine (saves importing MMEngine at start-up).
os.environ['MMCONV_NO_MMENGINE_REGISTRY'] = '1'
from mmconv.cli import selfsup2mmdet_main  # noqa: E402

del os.environ['MMCONV_NO_MMENGINE_REGISTRY']

if __name__ == '__main__':
    sys.exit(selfsup2mmdet_main())
