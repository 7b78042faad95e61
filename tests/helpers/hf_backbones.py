# Copyright (c) mmconv contributors. All rights reserved.
"""Test helpers for transformers' Swin / ConvNeXt / ResNet layouts: the
recorded layouts expanded, transformers' models built from them with every
parameter random, their ``save_pretrained`` files, and the target backbones
built from the shipped configs (transformers is a test-only reference)."""
import os
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from tests.fixtures import hf_backbone_layouts as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

Tensors = Dict[str, torch.Tensor]
Row = Tuple[str, Tuple[int, ...], str]


def saved_layout(name: str) -> List[Row]:
    """The recorded 5.25 ``model.safetensors`` layout of class ``name``
    (base tensors under the class's prefix, then its own)."""
    if name in F.SAVED:
        return list(F.SAVED[name]['tensors'])
    base, prefix, own, _ = F.DERIVED[name]
    return [(prefix + k, s, d) for k, s, d in F.SAVED[base]['tensors']] + \
        list(own)


def saved_config(name: str) -> Dict[str, Any]:
    """The recorded ``config.json`` fields of class ``name``."""
    if name in F.SAVED:
        return dict(F.SAVED[name]['config'])
    return dict(F.DERIVED[name][3])


def build_hf(name: str, seed: int = 0, **overrides: Any) -> nn.Module:
    """transformers' model of :data:`F.BUILD` ``name`` with every parameter
    and batch-norm statistic random (no zero bias or unit layer scale can
    hide a wrong mapping), eval mode."""
    import transformers
    cls, cfg_cls, kwargs = F.BUILD[name]
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_cls)(**dict(kwargs, **overrides))
    model = getattr(transformers, cls)(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if key.endswith('logit_scale'):
                p.copy_(2.3 + 0.1 * noise)
            elif key.endswith('layer_scale_parameter'):
                p.copy_(0.5 + 0.1 * noise)
            elif p.dim() == 1 and key.endswith('weight'):
                p.copy_(1 + 0.1 * noise)  # norm scales
            else:
                p.copy_(0.1 * noise)
        for key, b in model.named_buffers():
            if key.endswith('running_mean'):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif key.endswith('running_var'):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model


def save_folder(model: nn.Module, folder: str) -> Tensors:
    """``model.save_pretrained(folder)``; the tensors of its
    ``model.safetensors``."""
    from safetensors.torch import load_file
    model.save_pretrained(folder)
    return load_file(os.path.join(folder, 'model.safetensors'))


def rows(state_dict: Tensors) -> List[Row]:
    """``(name, shape, dtype)`` of every tensor, in order."""
    return [(k, tuple(v.shape), str(v.dtype).replace('torch.', ''))
            for k, v in state_dict.items()]


def strip(state_dict: Tensors, prefix: str) -> Tensors:
    """The tensors under ``prefix``, without it (a class's base model)."""
    return {k[len(prefix):]: v for k, v in state_dict.items()
            if k.startswith(prefix)}


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference (shapes must agree)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def build_backbone(config: str, args: Dict[str, Any],
                   drop: Tuple[str, ...] = ()) -> nn.Module:
    """The backbone of the shipped config ``configs/<config>`` with
    ``args`` (tiny sizes) and no initialisation from a file, eval mode."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    init_default_scope('mmdet')
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', config))
    backbone = cfg.model.backbone
    for key in drop:
        backbone.pop(key, None)
    backbone.update(args)
    backbone.init_cfg = None
    model = MODELS.build(backbone)
    model.eval()  # (SwinTransformer.train returns None)
    return model
