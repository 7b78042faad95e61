# Copyright (c) mmconv contributors. All rights reserved.
r"""torchvision (or any format mmconv reads) ResNet -> detectron2 ``.pkl``.

The mapping of detectron2's ``tools/convert-torchvision-to-d2.py``, done
safely::

    python tools/model_converters/torchvision2d2.py \
        resnet50-0676ba61.pth r50.pkl

then use ``r50.pkl`` with the config changes the command prints (RGB input,
torchvision pixel mean/std, ``STRIDE_IN_1X1: False``, depth), for detectron2
yaml and LazyConfig/detrex. ``--from`` takes any mmconv format (moco, swav,
densecl, dino, mmpretrain, mmdet, ...); ``--keep-fc`` keeps the classifier as
``stem.fc.*`` like detectron2's script.
"""
import sys

from mmconv.cli import preset_main

if __name__ == '__main__':
    sys.exit(preset_main('torchvision2d2'))
