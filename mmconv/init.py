# Copyright (c) mmconv contributors. All rights reserved.
"""``SelfSupPretrained``: load raw self-supervised checkpoints from a config.

.. code-block:: python

    custom_imports = dict(imports=['mmconv'], allow_failed_imports=False)
    model = dict(backbone=dict(init_cfg=dict(
        type='SelfSupPretrained',
        checkpoint='moco_v2_800ep_pretrain.pth.tar')))

The file is converted in memory with exactly the command line's rules
(:func:`mmconv.convert_checkpoint`), then loaded; a load that leaves backbone
tensors unset is an error, not a warning.
"""
import hashlib
import os
from typing import Dict, List, Optional

import torch
from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from torch import nn

from .convert import ConversionResult, convert_checkpoint
from .errors import ConversionError
from .io import load_file, safe_globals_context

__all__ = ['SelfSupPretrainedInit', 'load_checkpoint_any', 'fingerprint']

#: Attribute set on an initialised module: provenance for the load hook.
RECORD_ATTR = '_mmconv_pretrained'


def fingerprint(tensor: torch.Tensor) -> str:
    """Digest of a tensor's dtype, shape and exact bytes (blake2b)."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f'{t.dtype}{tuple(t.shape)}'.encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return digest.hexdigest()


def load_checkpoint_any(filename: str, map_location: str = 'cpu',
                        unsafe: bool = False):
    """Load a checkpoint through MMEngine's schemes, safely.

    Local paths go through :func:`mmconv.io.load_file` (weights-only,
    memory-mapped, clear errors); every other scheme MMEngine's
    ``CheckpointLoader`` knows (``http(s)://`` with its cache,
    ``open-mmlab://``, file backends, schemes registered by users) is loaded
    by MMEngine with ``weights_only`` and mmconv's allowlist.

    Args:
        filename (str): Path or URL.
        map_location (str): Device for non-local loads. Defaults to 'cpu'.
        unsafe (bool): Allow arbitrary pickles (trusted files only).

    Returns:
        The loaded checkpoint object.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    loader = CheckpointLoader._get_checkpoint_loader(filename)
    if loader is CheckpointLoader._schemes.get(''):
        return load_file(os.path.expanduser(filename), unsafe=unsafe,
                         warn=lambda m: print_log(m, 'current', 30))
    if unsafe:
        return loader(filename, map_location)
    with safe_globals_context():
        return loader(filename, map_location)


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
        checkpoint (str): Path or URL of the source checkpoint, in any
            format mmconv reads (``mmconv formats``), converted or not.
        method (str): Source format, or ``'auto'`` to detect it. Defaults
            to ``'auto'``.
        select (str, optional): ``'teacher'`` (default) or ``'student'`` for
            checkpoints holding both networks (DINO).
        prefix (str, optional): Use only the checkpoint keys under this
            prefix, stripped (e.g. ``'backbone.'``). Defaults to None.
        map_location (str): Device for non-local loads. Defaults to 'cpu'.
        min_coverage (float): Fraction of the module's tensors (parameters
            and buffers, ``num_batches_tracked`` aside) that must come from
            the checkpoint; below it loading raises. Defaults to 1.0.
        unsafe_load (bool): Allow arbitrary pickled objects in the file (runs
            code from it; trusted files only). Defaults to False.

    Example:
        >>> init_cfg = dict(type='SelfSupPretrained', method='moco',
        ...                 checkpoint='moco_v2_800ep_pretrain.pth.tar')
    """

    def __init__(self, checkpoint: str, method: str = 'auto',
                 select: Optional[str] = None, prefix: Optional[str] = None,
                 map_location: str = 'cpu', min_coverage: float = 1.0,
                 unsafe_load: bool = False) -> None:
        super().__init__(checkpoint, prefix=prefix, map_location=map_location)
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f'min_coverage must be in [0, 1], got '
                             f'{min_coverage}')
        self.method = method
        self.select = select
        self.min_coverage = min_coverage
        self.unsafe_load = unsafe_load
        self.result: Optional[ConversionResult] = None
        self.loaded: List[str] = []
        self.total = 0

    def __call__(self, module: nn.Module) -> None:
        """Convert the checkpoint, load it into ``module`` and check."""
        _init_children_first(module)
        checkpoint = load_checkpoint_any(self.checkpoint, self.map_location,
                                         self.unsafe_load)
        self.result = result = convert_checkpoint(checkpoint, self.method,
                                                  self.select, self.prefix)
        report = result.report
        print_log(f'SelfSupPretrained: {self.checkpoint}: {report.format} '
                  f'({report.detection}); {len(report.kept)} tensors kept, '
                  f'{len(report.dropped)} dropped', logger='current')
        own = module.state_dict()  # once: rebuilding it per key is O(n^2)
        target = {k: v for k, v in own.items()
                  if not k.endswith('num_batches_tracked')}
        loadable, mismatched = {}, []
        for key, tensor in result.state_dict.items():
            if key not in own:
                continue
            if key in target and target[key].shape != tensor.shape:
                mismatched.append(f'{key} {tuple(tensor.shape)} vs '
                                  f'{tuple(target[key].shape)}')
                continue
            loadable[key] = tensor
        module.load_state_dict(loadable, strict=False)
        self.loaded = [k for k in target if k in loadable]
        self.total = len(target)
        self._check_coverage(module, target, result, mismatched)
        setattr(module, RECORD_ATTR, {
            'file': str(self.checkpoint), 'format': report.format,
            'loaded': len(self.loaded), 'total': self.total,
            'fingerprints': {k: fingerprint(loadable[k]) for k in self.loaded},
        })
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _check_coverage(self, module: nn.Module, target: Dict[str, object],
                        result: ConversionResult,
                        mismatched: List[str]) -> None:
        """Raise (or warn) when the checkpoint does not cover ``module``."""
        n, total = len(self.loaded), self.total
        if n == total:
            return
        loaded = set(self.loaded)
        missing = [k for k in target if k not in loaded]
        unused = [k for k in result.state_dict
                  if k not in loaded and not k.endswith('num_batches_tracked')]
        name = module.__class__.__name__
        detail = (f'{n}/{total} tensors of {name} loaded from '
                  f'{self.checkpoint} (format {result.report.format}, '
                  f'{result.report.detection})')
        coverage = n / total if total else 1.0
        if coverage < self.min_coverage:
            raise ConversionError(
                f'SelfSupPretrained: only {detail}; not loaded in the model: '
                f'{", ".join(missing[:5]) or "-"}; unused in the checkpoint: '
                f'{", ".join(unused[:5]) or "-"}'
                + (f'; shape mismatches: {", ".join(mismatched[:3])}'
                   if mismatched else '') +
                ". Fix method= (e.g. method='auto'), select= or prefix=, or "
                f'lower min_coverage (now {self.min_coverage}) if a partial '
                'load is intended')
        print_log(f'SelfSupPretrained: partial load: {detail}; not loaded: '
                  f'{", ".join(missing[:5])}', logger='current', level=30)

    def _get_init_info(self) -> str:
        """Init info shown in MMEngine's parameter-initialisation log."""
        report = self.result.report if self.result else None
        fmt = f'{report.format} format, ' if report else ''
        return (f'SelfSupPretrained: load from {self.checkpoint} ({fmt}'
                f'{len(self.loaded)}/{self.total} tensors)')
