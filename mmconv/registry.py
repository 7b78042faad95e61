# Copyright (c) mmconv contributors. All rights reserved.
"""Registration with MMEngine, at the cost of ``mmengine.registry`` only,
and only once MMEngine is in use: ``SelfSupPretrained``, the load-check
hook, the MMDetection modules of :mod:`mmconv.models`, mmconv's safe reader
in MMEngine's ``CheckpointLoader`` and the families' ``self_loading``
classes (:func:`register_with_mmengine`; README "Safety").
"""
import importlib.abc
import importlib.util
import sys

__all__ = ['SelfSupPretrained', 'PretrainedLoadCheckHook',
           'register_with_mmengine', 'load_from_mmconv',
           'SAFE_SCHEMES']


def SelfSupPretrained(**kwargs):  # noqa: N802 (registry type name)
    """Build :class:`mmconv.init.SelfSupPretrainedInit` (see its docs)."""
    from .init import SelfSupPretrainedInit
    return SelfSupPretrainedInit(**kwargs)


def PretrainedLoadCheckHook(**kwargs):  # noqa: N802 (registry type name)
    """Build :class:`mmconv.hooks.PretrainedLoadCheckHook` (see its docs)."""
    from .hooks import PretrainedLoadCheckHook as Hook
    return Hook(**kwargs)


def _register() -> None:
    """Add the two factories to MMEngine's registries (idempotent)."""
    from mmengine.registry import HOOKS, WEIGHT_INITIALIZERS
    WEIGHT_INITIALIZERS.register_module(name='SelfSupPretrained',
                                        module=SelfSupPretrained, force=True)
    HOOKS.register_module(name='PretrainedLoadCheckHook',
                          module=PretrainedLoadCheckHook, force=True)


#: MMEngine ``CheckpointLoader`` schemes mmconv's safe reader replaces.
SAFE_SCHEMES = ('', 'http://', 'https://', 'torchvision://', 'modelzoo://',
                'open-mmlab://', 'openmmlab://', 'hf://')


def load_from_mmconv(filename, map_location=None):
    """MMEngine ``CheckpointLoader`` loader: :func:`mmconv.fetching.load_source`
    (weights-only with mmconv's allowlist, ``.safetensors`` as
    ``{'state_dict', 'meta'}``, URLs downloaded once, then read the same
    way). Tensors are returned on the CPU; MMEngine copies them to the
    model's device when it loads them."""
    from .fetching import load_source
    return load_source(str(filename))


def _register_loaders() -> None:
    """Make MMEngine read local files and URLs through mmconv's safe
    reader (``Pretrained``, ``load_from``, ``resume``)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes=SAFE_SCHEMES,
                                     loader=load_from_mmconv,
                                     force=True)


def _register_models() -> None:
    """Import :mod:`mmconv.models` (registers ViTDet, SimpleFPN)."""
    importlib.import_module('mmconv.models')


def _guard_mmpretrain_multimodal() -> None:
    """mmpretrain 1.2 imports its BLIP models whenever transformers>=4.28
    is installed, with names transformers 4.5x/5.x no longer has
    (``modeling_utils.apply_chunking_to_forward``): ``mmpretrain.models``
    then fails to import at all. Where that import would fail, mark the
    multimodal extra as missing, as mmpretrain does without transformers
    (its multimodal models become placeholders that say what to install).
    """
    dependency = sys.modules['mmpretrain.utils.dependency']
    if not getattr(dependency, 'WITH_MULTIMODAL', False):
        return
    try:
        from transformers.modeling_utils import (  # noqa: F401
            PreTrainedModel, apply_chunking_to_forward,
            find_pruneable_heads_and_indices, prune_linear_layer)
    except ImportError:
        dependency.WITH_MULTIMODAL = False


#: registry module -> what to run once it is imported
_WHEN_IMPORTED = {'mmengine.registry': _register,
                  'mmengine.runner.checkpoint': _register_loaders,
                  'mmdet.registry': _register_models,
                  'mmpretrain.utils.dependency': _guard_mmpretrain_multimodal}


def _defer_self_loading(module_name: str):
    """The action that wraps, once ``module_name`` is imported, the classes
    of it that a family declares as ``self_loading``
    (:func:`mmconv.init.defer_to_initializer`)."""
    def action() -> None:
        from .init import defer_to_initializer
        from .pipeline import FAMILIES
        module = sys.modules[module_name]
        for family in FAMILIES.values():
            for spec in family.self_loading:
                name, _, cls = spec.partition(':')
                if name == module_name:
                    defer_to_initializer(getattr(module, cls))
    return action


def _add_self_loading() -> None:
    """Add the ``Family.self_loading`` modules to :data:`_WHEN_IMPORTED`."""
    from .pipeline import FAMILIES
    for family in FAMILIES.values():
        for spec in family.self_loading:
            name = spec.partition(':')[0]
            _WHEN_IMPORTED.setdefault(name, _defer_self_loading(name))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs the :data:`_WHEN_IMPORTED` action of a module right after it is
    imported (by whoever imports it first)."""

    def __init__(self) -> None:
        self.pending = {n for n in _WHEN_IMPORTED if n not in sys.modules}

    def find_spec(self, name, path, target=None):
        if name not in self.pending:
            return None
        self.pending.discard(name)
        sys.meta_path.remove(self)  # find the real spec without us
        try:
            spec = importlib.util.find_spec(name)
        finally:
            if self.pending:
                sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:  # pragma: no cover
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _WHEN_IMPORTED[name]()

        spec.loader.exec_module = exec_module
        return spec


def register_with_mmengine() -> None:
    """Register now where the registries are loaded, else on import."""
    from .stack import check_mmengine
    check_mmengine()  # an MMEngine older than 0.10: ImportError, one line
    _add_self_loading()
    for name, action in _WHEN_IMPORTED.items():
        if name in sys.modules:
            action()
    if any(n not in sys.modules for n in _WHEN_IMPORTED) and not any(
            isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
