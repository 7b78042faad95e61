# Copyright (c) mmconv contributors. All rights reserved.
r"""MMDetection ResNet backbone (or whole detector) -> torchvision.

    python tools/model_converters/mmdet2torchvision.py epoch_12.pth r50_tv.pth
    python tools/model_converters/mmdet2torchvision.py epoch_12.pth r50.pkl \
        --to detectron2

Whole-detector checkpoints are read through their ``backbone.*`` keys.
MMDetection does not record the backbone's style: pass ``--style caffe`` for
backbones trained with ``style='caffe'`` (torchvision's Bottleneck strides in
the 3x3 conv, so such a backbone is not equivalent there; the command warns).
"""
import sys

from mmconv.cli import preset_main

if __name__ == '__main__':
    sys.exit(preset_main('mmdet2torchvision'))
