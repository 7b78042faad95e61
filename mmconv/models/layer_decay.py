# Copyright (c) mmconv contributors. All rights reserved.
"""Layer-wise learning-rate decay for detectors with a plain-ViT backbone.

The ViTDet recipe (Li et al., 2022; detectron2's
``projects/ViTDet/configs/common/coco_loader_lsj.py`` and
``detectron2.modeling.backbone.vit.get_vit_lr_decay_rate``) fine-tunes the
pre-trained blocks with smaller learning rates the closer they are to the
input: with ``L`` blocks and decay rate ``r``, a parameter's learning rate is
multiplied by ``r ** (L + 1 - layer_id)`` where ``layer_id`` is

* 0 for the patch embedding and the position embedding,
* ``i + 1`` for ``backbone.blocks.i``,
* ``L + 1`` (factor 1) for everything else: the backbone's final norm, the
  pyramid and the heads.

The paper uses ``r`` = 0.7 for ViT-B, 0.8 for ViT-L and 0.9 for ViT-H.
MMDetection's own ``LearningRateDecayOptimizerConstructor`` handles ConvNeXt
stages only, so a ViTDet config uses this one::

    optim_wrapper = dict(
        constructor='ViTLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=0.7, num_layers=12, ...))

Everything else in ``paramwise_cfg`` (``norm_decay_mult``,
``custom_keys``...) works as in MMEngine's
:class:`~mmengine.optim.DefaultOptimWrapperConstructor`: the decay factor
multiplies the learning rate those rules give.
"""
import re
from typing import List, Optional, Union

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

__all__ = ['ViTLayerDecayOptimizerConstructor', 'vit_layer_id']

_BLOCK = re.compile(r'^backbone\.blocks\.(\d+)\.')
_EMBEDDING = re.compile(
    r'^backbone\.(?:pos_embed$|cls_token$|reg_token$|patch_embed\.)')


def vit_layer_id(name: str, num_layers: int) -> int:
    """The ViTDet layer id of parameter ``name`` of a detector.

    Args:
        name (str): Parameter name in the detector (``backbone.blocks.3...``).
        num_layers (int): Number of transformer blocks.

    Returns:
        int: 0 for the embeddings, ``i + 1`` for block ``i``, ``num_layers +
        1`` for every other parameter.
    """
    if _EMBEDDING.match(name):
        return 0
    block = _BLOCK.match(name)
    if block:
        return int(block.group(1)) + 1
    return num_layers + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """MMEngine's default constructor with ViTDet's layer-wise lr decay.

    ``paramwise_cfg`` takes two keys besides MMEngine's:

    * ``decay_rate`` (float, required): ``r`` in ``(0, 1]``;
    * ``num_layers`` (int, optional): number of blocks; defaults to
      ``len(model.backbone.blocks)``.

    Raises:
        ValueError: ``decay_rate`` missing or outside ``(0, 1]``, or
            ``num_layers`` not given and not found on the model.
    """

    def __init__(self, optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None) -> None:
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        rate = self.paramwise_cfg.get('decay_rate')
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(
                'ViTLayerDecayOptimizerConstructor: set paramwise_cfg.'
                f'decay_rate in (0, 1] (ViTDet: 0.7 for ViT-B), got {rate!r}')
        self.decay_rate = float(rate)
        self.num_layers: Optional[int] = self.paramwise_cfg.get('num_layers')

    def _layers_of(self, module: nn.Module) -> int:
        """``num_layers`` or the number of blocks of ``module.backbone``."""
        if self.num_layers is not None:
            return int(self.num_layers)
        blocks = getattr(getattr(module, 'backbone', None), 'blocks', None)
        if not isinstance(blocks, nn.ModuleList):
            raise ValueError(
                'ViTLayerDecayOptimizerConstructor: the model has no '
                'backbone.blocks; set paramwise_cfg.num_layers')
        return len(blocks)

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        """MMEngine's parameter groups, then (for the whole model) each
        group's learning rate times its layer's decay factor."""
        super().add_params(params, module, prefix, is_dcn_module)
        if prefix:  # a recursive call for a child module
            return
        num_layers = self._layers_of(module)
        names = {id(p): n for n, p in module.named_parameters()}
        for group in params:
            name = names[id(group['params'][0])]
            scale = self.decay_rate**(
                num_layers + 1 - vit_layer_id(name, num_layers))
            group['lr'] = group.get('lr', self.base_lr) * scale
            group['lr_decay_scale'] = scale
