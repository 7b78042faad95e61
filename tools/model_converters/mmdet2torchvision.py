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
import os
import sys

os.environ['MMCONV_NO_MMENGINE_REGISTRY'] = '1'
from mmconv.d2cli import mmdet2torchvision_main  # noqa: E402

del os.environ['MMCONV_NO_MMENGINE_REGISTRY']

if __name__ == '__main__':
    sys.exit(mmdet2torchvision_main())
