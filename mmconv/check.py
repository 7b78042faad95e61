# Copyright (c) mmconv contributors. All rights reserved.
"""``mmconv check CONFIG``: build a config's model without data, initialise it
as training would and report where each module's weights came from (README
"Checking a config before training"; the table is :mod:`mmconv.provenance`).
"""
from typing import Optional, Sequence

from .errors import CheckFailedError, MMConvError
from .provenance import (Provenance, compare, fingerprints,
                         record_fingerprints)

__all__ = ['check_config']


def _build_model(config: str, cfg_options: Optional[dict]):
    """The model of ``config`` (custom imports and default scope applied),
    and the config."""
    import warnings

    # MMEngine imports pkg_resources, which setuptools 80 deprecates with a
    # warning on every run; it is not the user's to act on
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                            category=UserWarning)
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    if '::' in config:  # mmdet::mask_rcnn/... names a package's config
        from mmengine.hub import get_config
        cfg = get_config(config)
    else:
        cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope', 'mmdet')
    if scope == 'mmdet':
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    return MODELS.build(cfg.model), cfg


def _apply(model, path: str) -> None:
    """Load ``path`` into ``model`` as ``load_from`` does (non-strict),
    through the safe loader."""
    from mmengine.runner.checkpoint import load_state_dict

    from .pipeline import load_unwrapped
    sd = load_unwrapped(path).state_dict
    sd = {k[len('module.'):] if k.startswith('module.') else k: v
          for k, v in sd.items()}
    load_state_dict(model, sd, strict=False)


def check_config(config: str, checkpoint: Optional[str] = None,
                 cfg_options: Optional[dict] = None) -> Provenance:
    """Initialise the model of ``config`` and say where its weights are from.

    Args:
        config (str): MMDetection config file (or ``mmdet::`` name).
        checkpoint (str, optional): A file to apply after initialisation
            (as ``load_from``); defaults to the config's ``load_from``.
        cfg_options (dict, optional): Overrides, as ``--cfg-options``.

    Returns:
        Provenance: Per-module rows and the problems found.
    """
    from .provenance import pretrained_configs
    model, cfg = _build_model(config, cfg_options)
    record_fingerprints()
    before = fingerprints(model)
    try:
        model.init_weights()
    except MMConvError as err:
        modules = [f'{name or "model"} (init from {c["checkpoint"]})'
                   for name, c in pretrained_configs(model)]
        raise CheckFailedError(
            f'{config}: {"; ".join(modules)}: weight initialisation failed: '
            f'{err}') from None
    loaded = checkpoint or cfg.get('load_from')
    if loaded:
        _apply(model, str(loaded))
    return compare(model, before, str(loaded) if loaded else None)


def parse_cfg_options(items: Sequence[str]) -> dict:
    """``key=value`` pairs as MMEngine's ``DictAction`` parses them."""
    import argparse

    from mmengine.config import DictAction
    namespace = argparse.Namespace()
    DictAction(option_strings=[], dest='opts')(None, namespace, list(items))
    return namespace.opts
