# Copyright (c) mmconv contributors. All rights reserved.
"""mmconv: checkpoint conversion for MMDetection.

Importing the package (e.g. through
``custom_imports=dict(imports=['mmconv'], allow_failed_imports=False)``)
registers the ``SelfSupPretrained`` weight initializer and the
``PretrainedLoadCheckHook`` with MMEngine. When torch is already loaded (as
in every MMEngine run) it also adds mmconv's narrow allowlist
(``HistoryBuffer``, ``argparse.Namespace``, numpy arrays/scalars) to torch's
weights-only loader, so MMEngine 0.10.7 can load its own checkpoints
(``load_from``, ``resume``, ``mim test``) under torch>=2.6.

The public API below is imported on first use, and the registration waits
until MMEngine's registries are imported (:mod:`mmconv.registry`), so
``import mmconv`` imports neither torch nor MMEngine and the command lines
start fast. Where to add a format: :mod:`mmconv.formats`.
"""
import importlib
import sys
from typing import Any

from .errors import (AmbiguousFormatError, ConversionError, InputError,
                     KeyCollisionError, MMConvError, OutputError,
                     UnknownFormatError, UnsafeCheckpointError, UsageError)
from .formats import (FAMILIES, FORMATS, TARGETS, Family, SourceFormat,
                      Target, format_names, get_format, register, unregister)
from .registry import register_with_mmengine
from .version import __version__

register_with_mmengine()

#: public name -> submodule that defines it (imported on first access)
_LAZY = {
    'Request': 'pipeline', 'Conversion': 'pipeline', 'Written': 'pipeline',
    'build_output': 'pipeline', 'convert_file': 'pipeline',
    'load_and_convert': 'pipeline', 'convert_checkpoint': 'pipeline',
    'convert_state_dict': 'pipeline', 'rename_key': 'convert',
    'Detection': 'detect', 'detect_format': 'detect',
    'load_file': 'io', 'load_source': 'io', 'save_file': 'io',
    'allow_safe_globals_everywhere': 'io',
    'ConversionReport': 'report', 'KeyRecord': 'report',
    'Unwrapped': 'containers', 'unwrap': 'containers',
    'SelfSupPretrainedInit': 'init', 'PretrainedLoadCheckHook': 'hooks',
}

__all__ = [
    '__version__', 'FAMILIES', 'FORMATS', 'TARGETS', 'Family',
    'SourceFormat', 'Target', 'format_names', 'get_format', 'register',
    'unregister', 'MMConvError', 'UsageError', 'InputError',
    'UnsafeCheckpointError', 'ConversionError', 'UnknownFormatError',
    'AmbiguousFormatError', 'KeyCollisionError', 'OutputError'
] + sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the public API lazily (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f'.{_LAZY[name]}', __name__),
                        name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


if 'torch' in sys.modules:
    from .io import allow_safe_globals_everywhere
    allow_safe_globals_everywhere()
