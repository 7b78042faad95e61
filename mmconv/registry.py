# Copyright (c) mmconv contributors. All rights reserved.
"""Registration with MMEngine, at the cost of ``mmengine.registry`` only.

``SelfSupPretrained`` (weight initializer) and ``PretrainedLoadCheckHook``
(hook) are registered as small factories that import their implementation
(torch, ``mmengine.model``, ``mmengine.hooks``) when a config first builds
them, so ``import mmconv`` and the command lines' ``--help`` stay light.
Building either also adds mmconv's allowlist to torch's weights-only loader
(see :func:`mmconv.io.allow_safe_globals_everywhere`).
"""
from mmengine.registry import HOOKS, WEIGHT_INITIALIZERS

__all__ = ['SelfSupPretrained', 'PretrainedLoadCheckHook']


def SelfSupPretrained(**kwargs):  # noqa: N802 (registry type name)
    """Build :class:`mmconv.init.SelfSupPretrainedInit` (see its docs)."""
    from .init import SelfSupPretrainedInit
    from .io import allow_safe_globals_everywhere
    allow_safe_globals_everywhere()
    return SelfSupPretrainedInit(**kwargs)


def PretrainedLoadCheckHook(**kwargs):  # noqa: N802 (registry type name)
    """Build :class:`mmconv.hooks.PretrainedLoadCheckHook` (see its docs)."""
    from .hooks import PretrainedLoadCheckHook as Hook
    from .io import allow_safe_globals_everywhere
    allow_safe_globals_everywhere()
    return Hook(**kwargs)


WEIGHT_INITIALIZERS.register_module(name='SelfSupPretrained',
                                    module=SelfSupPretrained)
HOOKS.register_module(name='PretrainedLoadCheckHook',
                      module=PretrainedLoadCheckHook)
