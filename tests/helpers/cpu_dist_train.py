# Copyright (c) mmconv contributors. All rights reserved.
"""Test-only launcher: MMDetection's tools/train.py on CPU-only ranks.

MMEngine's pytorch launcher calls ``torch.cuda.set_device`` unconditionally;
without a GPU that fails, so this makes it a no-op and then runs the
``train.py`` shipped inside the mmdet package (the one ``mim train`` runs).
Use with ``torchrun --nproc_per_node 2 tests/helpers/cpu_dist_train.py
CONFIG --launcher pytorch --cfg-options env_cfg.dist_cfg.backend=gloo ...``.
"""
import os
import runpy
import sys

import torch

if not torch.cuda.is_available():
    torch.cuda.set_device = lambda *args, **kwargs: None

import mmdet  # noqa: E402

TRAIN = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'tools',
                     'train.py')
sys.argv[0] = TRAIN
runpy.run_path(TRAIN, run_name='__main__')
