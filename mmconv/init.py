# Copyright (c) mmconv contributors. All rights reserved.
"""``SelfSupPretrained``: load any checkpoint mmconv reads from a config's
``init_cfg`` (README "Loading raw checkpoints from a config").
"""
import functools
from typing import Any, Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from torch import nn

from .containers import take_prefix, unwrap
from .convert import refit
from .errors import ConversionError, MMConvError
from .fetching import load_source
from .pipeline import OPTIONS, Conversion, Request, convert_state_dict
from .provenance import RECORD_ATTR, fingerprint, fingerprints_recorded
from .verify import required_keys

__all__ = ['SelfSupPretrainedInit', 'defer_to_initializer']

#: ``init_cfg['type']`` values this module's initializer is registered as.
_OWN_TYPES = ('SelfSupPretrained', 'SelfSupPretrainedInit')
#: The options (``spec.Request`` fields) the initializer takes as keywords.
_OPTION_KEYWORDS = tuple(n for n, o in OPTIONS.items() if o.initializer)


def defer_to_initializer(cls: type) -> None:
    """Let ``init_cfg=dict(type='SelfSupPretrained', ...)`` work on a class
    whose own ``init_weights`` loads ``init_cfg['checkpoint']`` itself.

    MMDetection's ``SwinTransformer`` (and other backbones of that pattern)
    override ``init_weights`` and read any ``init_cfg`` that has a
    ``checkpoint`` as a plain file, ignoring its ``type``: the initializer
    never runs. Wrapped, the class hands such an ``init_cfg`` to
    ``BaseModule.init_weights``, which runs the initializer as on every
    other module (children first, see :func:`_init_children_first`); any
    other ``init_cfg`` (``Pretrained``, None) still takes the class's own
    path. Idempotent.

    Args:
        cls (type): A ``BaseModule`` subclass.
    """
    from mmengine.model import BaseModule
    own = cls.__dict__.get('init_weights')
    if own is None or getattr(own, '_mmconv_deferred', False):
        return

    @functools.wraps(own)
    def init_weights(self) -> None:
        cfg = self.init_cfg
        kind = cfg.get('type') if isinstance(cfg, dict) else None
        if getattr(kind, '__name__', kind) in _OWN_TYPES:
            BaseModule.init_weights(self)
        else:
            own(self)

    init_weights._mmconv_deferred = True  # type: ignore[attr-defined]
    cls.init_weights = init_weights


def _init_children_first(module: nn.Module) -> None:
    """Run the children's ``init_weights`` now, as ``BaseModule`` would.

    MMEngine gives only ``type='Pretrained'`` the last word (it runs after
    the children initialise themselves); other initializers run before the
    children and are overwritten by their own ``init_cfg``. Initialising the
    children here, with ``BaseModule``'s own rules, marks them initialised
    so they are skipped afterwards, and the checkpoint is loaded last.
    """
    from mmengine.model import is_model_wrapper
    for child in module.children():
        if is_model_wrapper(child) and not hasattr(child, 'init_weights'):
            child = child.module
        if hasattr(child, 'init_weights') and not getattr(
                child, 'is_init', False):
            child.init_weights()
            if hasattr(child, '_params_init_info'):
                update_init_info(
                    child, init_info='Initialized by user-defined '
                    f'`init_weights` in {child.__class__.__name__} ')
            if not hasattr(child, '_is_init'):
                # plain nn.Module with init_weights(): BaseModule checks
                # `is_init`, so keep it from running a second time
                child.is_init = True


class SelfSupPretrainedInit(PretrainedInit):
    """Initialise a module from a raw self-supervised checkpoint.

    Args:
        checkpoint (str): Path, URL or MMEngine ``scheme://`` name of the
            source checkpoint, in any format mmconv reads (``mmconv
            formats``), converted or not, or in the module's own layout.
        method (str): Source format, or ``'auto'`` to detect it. Defaults
            to ``'auto'``.
        map_location (str): Device for non-local loads. Defaults to 'cpu'.
        min_coverage (float): Fraction of the module's tensors (parameters
            and buffers, ``num_batches_tracked`` aside) that must come from
            the checkpoint; below it loading raises. Defaults to 1.0.
        unsafe_load (bool): Allow arbitrary pickled objects in the file (runs
            code from it; trusted files only). Defaults to False.
        **options: The options declared ``initializer=True`` in
            ``mmconv.spec.Request``: ``select`` (``'teacher'``, the
            default, or ``'student'`` for checkpoints holding both
            networks (DINO); ``'ema'`` for the ``model_ema`` weights of a
            ConvNeXt training checkpoint) and ``prefix`` (use only the
            checkpoint keys under it, stripped, e.g. ``'backbone.'``).

    Example:
        >>> init_cfg = dict(type='SelfSupPretrained', method='moco',
        ...                 checkpoint='moco_v2_800ep_pretrain.pth.tar')
    """

    def __init__(self, checkpoint: str, method: str = 'auto', *,
                 map_location: str = 'cpu', min_coverage: float = 1.0,
                 unsafe_load: bool = False, **options: Any) -> None:
        unknown = [k for k in options if k not in _OPTION_KEYWORDS]
        if unknown:
            raise TypeError(f'{type(self).__name__}.__init__() got an '
                            f'unexpected keyword argument {unknown[0]!r}')
        options = {name: options.get(name, OPTIONS[name].default)
                   for name in _OPTION_KEYWORDS}
        super().__init__(checkpoint, prefix=options['prefix'],
                         map_location=map_location)
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f'min_coverage must be in [0, 1], got '
                             f'{min_coverage}')
        self.method = method
        for name, value in options.items():  # select, prefix
            setattr(self, name, value)
        self.min_coverage = min_coverage
        self.unsafe_load = unsafe_load
        self.result: Optional[Conversion] = None
        self.loaded: List[str] = []
        self.never_pretrained: List[str] = []
        self.total = 0

    def __call__(self, module: nn.Module) -> None:
        """Convert the checkpoint, load it into ``module`` and check."""
        _init_children_first(module)
        checkpoint = load_source(
            str(self.checkpoint), unsafe=self.unsafe_load,
            warn=lambda m: print_log(m, 'current', 30))
        own = module.state_dict()  # once: rebuilding it per key is O(n^2)
        target = {k: own[k] for k in required_keys(None, own)}
        state_dict, how = self._choose(checkpoint, target)
        print_log(f'SelfSupPretrained: {self.checkpoint}: {how}',
                  logger='current')
        self.never_pretrained = self._never_pretrained(target, state_dict)
        if self.never_pretrained:
            target = {k: v for k, v in target.items()
                      if k not in self.never_pretrained}
            print_log(f'SelfSupPretrained: {len(self.never_pretrained)} '
                      'tensors no pre-trained checkpoint of this family has '
                      'keep their initialisation: '
                      f'{", ".join(self.never_pretrained)}',
                      logger='current')
        loadable, mismatched = {}, []
        for key, tensor in state_dict.items():
            if key not in own:
                continue
            if key in target and target[key].shape != tensor.shape:
                mismatched.append(f'{key} {tuple(tensor.shape)} vs '
                                  f'{tuple(target[key].shape)}')
                continue
            loadable[key] = tensor
        self.loaded = [k for k in target if k in loadable]
        self.total = len(target)
        # refuse before loading: a refused file leaves the module untouched
        self._check_coverage(module, target, state_dict, mismatched)
        module.load_state_dict(loadable, strict=False)
        setattr(module, RECORD_ATTR, {
            'file': str(self.checkpoint), 'format': self.format_name,
            'loaded': len(self.loaded), 'total': self.total,
            'fingerprints': ({k: fingerprint(loadable[k])
                              for k in self.loaded}
                             if fingerprints_recorded() else None),
        })
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _never_pretrained(self, target: Dict[str, torch.Tensor],
                          state_dict: Dict[str, torch.Tensor]) -> List[str]:
        """Module keys absent from the file that need not come from it
        (:func:`mmconv.verify.required_keys`: the source family's
        ``never_pretrained``)."""
        if self.result is None:
            return []
        required = set(required_keys(self.result.family, target))
        return [k for k in target
                if k not in state_dict and k not in required]

    @property
    def format_name(self) -> str:
        """The source format used, or ``'own layout'``."""
        return self.result.format.name if self.result else 'own layout'

    def _choose(self, checkpoint: Any, target: Dict[str, torch.Tensor]
                ) -> Tuple[Dict[str, torch.Tensor], str]:
        """The state dict to load: converted by the registry's pipeline, or
        the file's own keys when they fit ``target`` at least as well
        (``method='auto'`` only)."""
        unwrapped = unwrap(checkpoint, self.select)
        if self.prefix:
            unwrapped = take_prefix(unwrapped, self.prefix)
        entries = checkpoint if isinstance(checkpoint, dict) else {}
        try:
            conv = convert_state_dict(unwrapped, Request(format=self.method),
                                      entries)
        except MMConvError:
            if self.method != 'auto':
                raise
            conv = None
        if conv is not None and conv.family.fit:
            start = len(conv.changed)
            count = refit(conv.state_dict, conv.family.fit, conv.changed,
                          {k: tuple(v.shape) for k, v in target.items()})
            if count:
                conv.notes.append(f'{count} tensors fitted to the module: '
                                  f'{conv.changed[start].what}')
        own = unwrapped.state_dict

        def fit(sd: Dict[str, torch.Tensor]) -> int:
            return sum(1 for k, v in sd.items()
                       if k in target and target[k].shape == v.shape)

        if conv is None or (self.method == 'auto'
                            and fit(own) > fit(conv.state_dict)):
            self.result = None
            return own, (f'loaded in the module\'s own layout, as Pretrained '
                         f'would ({unwrapped.where}; no conversion)')
        self.result = conv
        report = conv.report
        return conv.state_dict, (
            f'{report.format} ({report.detection}); {len(report.kept)} '
            f'tensors kept, {len(report.dropped)} dropped')

    def _check_coverage(self, module: nn.Module, target: Dict[str, object],
                        state_dict: Dict[str, torch.Tensor],
                        mismatched: List[str]) -> None:
        """Raise (or warn) when the checkpoint does not cover ``module``."""
        n, total = len(self.loaded), self.total
        if n == total:
            return
        loaded = set(self.loaded)
        missing = [k for k in target if k not in loaded]
        unused = [k for k in state_dict
                  if k not in loaded and not k.endswith('num_batches_tracked')]
        name = module.__class__.__name__
        how = (f'format {self.result.report.format}, '
               f'{self.result.report.detection}' if self.result
               else "the module's own layout")
        detail = (f'{n}/{total} tensors of {name} loaded from '
                  f'{self.checkpoint} ({how})')
        coverage = n / total if total else 1.0
        if coverage < self.min_coverage:
            raise ConversionError(
                f'SelfSupPretrained: only {detail}; not loaded in the model: '
                f'{", ".join(missing[:5]) or "-"}; unused in the checkpoint: '
                f'{", ".join(unused[:5]) or "-"}'
                + (f'; shape mismatches: {", ".join(mismatched[:3])}'
                   if mismatched else '') + self._file_holds() +
                ". Fix method= (e.g. method='auto'), select= or prefix=, "
                "make the model's architecture match the file's, or "
                f'lower min_coverage (now {self.min_coverage}) if a partial '
                'load is intended')
        print_log(f'SelfSupPretrained: partial load: {detail}; not loaded: '
                  f'{", ".join(missing[:5])}', logger='current', level=30)

    def _file_holds(self) -> str:
        """``'; the file holds: <architecture lines>'`` of the conversion
        (e.g. ``convnext: arch=tiny depths=[3, 3, 9, 3] ...``), or ''."""
        if self.result is None or not self.result.lines:
            return ''
        return '; the file holds: ' + '; '.join(
            ' '.join(line.split()) for line in self.result.lines)

    def _get_init_info(self) -> str:
        """Init info shown in MMEngine's parameter-initialisation log."""
        fmt = f'{self.format_name} format, '
        return (f'SelfSupPretrained: load from {self.checkpoint} ({fmt}'
                f'{len(self.loaded)}/{self.total} tensors)')
