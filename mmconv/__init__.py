# Copyright (c) mmconv contributors. All rights reserved.
"""mmconv: checkpoint conversion for MMDetection.

Importing the package (e.g. through
``custom_imports=dict(imports=['mmconv'], allow_failed_imports=False)``)
registers the ``SelfSupPretrained`` weight initializer and the
``PretrainedLoadCheckHook`` with MMEngine, and makes MMEngine's
``CheckpointLoader`` read local files and URLs with mmconv's safe reader, so
MMEngine 0.10.7 loads its own checkpoints (``HistoryBuffer`` in
``message_hub``: ``load_from``, ``resume``, ``mim test``) under torch>=2.6.
torch's process-wide weights-only allowlist is never changed.

The public API below is imported on first use, after :mod:`mmconv.pipeline`
(which fills the format registry), and the registration waits until
MMEngine's registries are imported (:mod:`mmconv.registry`), so
``import mmconv`` imports neither torch nor MMEngine and the command lines
start fast. No module of the package takes a name from here. Where to add a
format: :mod:`mmconv.formats`.
"""
import importlib
from typing import Any

from .errors import (AmbiguousFormatError, ConversionError, InputError,
                     KeyCollisionError, MMConvError, OutputError,
                     UnknownFormatError, UnsafeCheckpointError, UsageError)
from .registry import register_with_mmengine
from .version import __version__

register_with_mmengine()

#: public name -> submodule that defines it (imported on first access)
_LAZY = {
    'FAMILIES': 'spec', 'FORMATS': 'spec', 'TARGETS': 'spec',
    'Family': 'spec', 'SourceFormat': 'spec', 'Target': 'spec',
    'format_names': 'spec', 'get_format': 'spec', 'register': 'spec',
    'unregister': 'spec',
    'Request': 'spec', 'Conversion': 'spec', 'Written': 'pipeline',
    'build_output': 'pipeline', 'convert_file': 'pipeline',
    'load_and_convert': 'pipeline', 'convert_checkpoint': 'pipeline',
    'convert_state_dict': 'pipeline', 'rename_key': 'convert',
    'Detection': 'detect', 'detect_format': 'detect',
    'load_file': 'reading', 'load_source': 'fetching', 'save_file': 'writing',
    'ConversionReport': 'report', 'KeyRecord': 'report',
    'Unwrapped': 'containers', 'unwrap': 'containers',
    'SelfSupPretrainedInit': 'init', 'PretrainedLoadCheckHook': 'hooks',
}

__all__ = [
    '__version__', 'MMConvError', 'UsageError', 'InputError',
    'UnsafeCheckpointError', 'ConversionError', 'UnknownFormatError',
    'AmbiguousFormatError', 'KeyCollisionError', 'OutputError'
] + sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the public API lazily (PEP 562), the registry filled."""
    if name in _LAZY:
        importlib.import_module('.pipeline', __name__)
        value = getattr(importlib.import_module(f'.{_LAZY[name]}', __name__),
                        name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
