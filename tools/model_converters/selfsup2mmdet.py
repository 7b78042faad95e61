# Copyright (c) mmconv contributors. All rights reserved.
"""Self-supervised checkpoint -> MMDetection ResNet backbone.

Drop-in for MMDetection's ``tools/model_converters/selfsup2mmdet.py``::

    python tools/model_converters/selfsup2mmdet.py \
        moco_v2_800ep_pretrain.pth.tar mocov2_r50.pth --selfsup moco

``--selfsup`` (or ``--from``) also takes mocov3, swav, densecl, simsiam, barlowtwins, vicreg,
dino, vissl, mmpretrain, torchvision, mmdet, and defaults to ``auto``. Use the
output with ``init_cfg=dict(type='Pretrained', checkpoint='mocov2_r50.pth')``.
"""
import sys

from mmconv.cli import preset_main

if __name__ == '__main__':
    sys.exit(preset_main('selfsup2mmdet'))
