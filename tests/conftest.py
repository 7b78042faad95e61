# Copyright (c) mmconv contributors. All rights reserved.
"""Shared fixtures: real models with random weights, nothing downloaded."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope='session')
def tv_resnet50():
    """A torchvision ResNet-50 with random weights and random BN stats."""
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    return model.eval()
