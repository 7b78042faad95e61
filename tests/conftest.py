# Copyright (c) mmconv contributors. All rights reserved.
"""Shared fixtures: real models with random weights, nothing downloaded."""
import os
import shutil
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# before anything imports mmpretrain: mmconv guards mmpretrain 1.2's
# multimodal import, which fails with the transformers the tests use
import mmconv  # noqa: E402,F401

if os.environ.get('PYTEST_XDIST_WORKER'):
    # one pytest-xdist worker per CPU (pytest.ini): one thread each, or
    # the workers' intra-op thread pools fight over the same cores
    torch.set_num_threads(1)


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


@pytest.fixture(scope='module')
def module_tmp_path(tmp_path_factory, request):
    """A temporary directory for one test module, removed when it ends.

    Module-scoped fixtures hold big checkpoints; pytest's retention policy
    only removes function-scoped ``tmp_path`` directories early.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit('.', 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)
