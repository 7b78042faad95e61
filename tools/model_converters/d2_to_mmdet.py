# Copyright (c) mmconv contributors. All rights reserved.
"""detectron2 / Caffe2 (MSRA) ResNet -> MMDetection backbone.

Reads detectron2 model-zoo files (``backbone.bottom_up.res2...``), detrex and
bare ``res2...`` files (``.pkl`` or ``.pth``) and the MSRA Caffe2 ImageNet
models (``R-50.pkl``, ``R-101.pkl``: ``conv1_w``, ``res2_0_branch2a_w``...)::

    python tools/model_converters/d2_to_mmdet.py R-50.pkl r50_caffe.pth

It decides and reports the MMDetection ``style`` (``--style`` overrides),
completes FrozenBN statistics so MMDetection's BN computes what detectron2
computes, and prints the ``data_preprocessor``/``backbone`` config to use.
``--to torchvision`` writes a torchvision state dict instead.
"""
import sys

from mmconv.cli import preset_main

if __name__ == '__main__':
    sys.exit(preset_main('d2_to_mmdet'))
