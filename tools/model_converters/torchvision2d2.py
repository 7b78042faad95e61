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
import os
import sys

os.environ['MMCONV_NO_MMENGINE_REGISTRY'] = '1'
from mmconv.d2cli import torchvision2d2_main  # noqa: E402

del os.environ['MMCONV_NO_MMENGINE_REGISTRY']

if __name__ == '__main__':
    sys.exit(torchvision2d2_main())
