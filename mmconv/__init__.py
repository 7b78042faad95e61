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

The public API below is imported on first use, so ``import mmconv`` itself
costs only ``mmengine.registry`` (no torch) and the command lines start fast.
"""
import importlib
import os
import sys
from typing import Any

if not os.environ.get('MMCONV_NO_MMENGINE_REGISTRY'):
    # Set only by the stand-alone converter scripts, which build no MMEngine
    # objects and so skip importing MMEngine (~0.4 s of start-up).
    from . import registry  # noqa: F401  (registers with MMEngine)
from .errors import (ConversionError, InputError, KeyCollisionError,
                     MMConvError, OutputError, UnknownFormatError,
                     UnsafeCheckpointError)
from .formats import FORMATS, Format, format_names, get_format
from .version import __version__

#: public name -> submodule that defines it (imported on first access)
_LAZY = {
    'build_output': 'api', 'convert_file': 'api', 'load_and_convert': 'api',
    'ConversionResult': 'convert', 'convert_checkpoint': 'convert',
    'convert_state_dict': 'convert', 'rename_key': 'convert',
    'Detection': 'detect', 'detect_format': 'detect',
    'load_file': 'io', 'save_file': 'io',
    'allow_safe_globals_everywhere': 'io',
    'ConversionReport': 'report', 'KeyRecord': 'report',
    'Unwrapped': 'containers', 'unwrap': 'containers',
    'SelfSupPretrainedInit': 'init', 'PretrainedLoadCheckHook': 'hooks',
}

__all__ = [
    '__version__', 'FORMATS', 'Format', 'format_names', 'get_format',
    'MMConvError', 'InputError', 'UnsafeCheckpointError', 'ConversionError',
    'UnknownFormatError', 'KeyCollisionError', 'OutputError'
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
