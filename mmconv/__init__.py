# Copyright (c) mmconv contributors. All rights reserved.
"""mmconv: checkpoint conversion for MMDetection.

Importing the package (e.g. through
``custom_imports=dict(imports=['mmconv'], allow_failed_imports=False)``)
registers the ``SelfSupPretrained`` weight initializer and the
``PretrainedLoadCheckHook`` with MMEngine, and adds mmconv's narrow
allowlist (``HistoryBuffer``, ``argparse.Namespace``, numpy arrays/scalars) to
torch's weights-only loader so MMEngine 0.10.7 can load its own checkpoints
(``load_from``, ``resume``, ``mim test``) under torch>=2.6.
"""
from .api import build_output, convert_file, load_and_convert
from .convert import (ConversionResult, convert_checkpoint,
                      convert_state_dict, rename_key)
from .detect import Detection, detect_format
from .errors import (ConversionError, InputError, KeyCollisionError,
                     MMConvError, OutputError, UnknownFormatError,
                     UnsafeCheckpointError)
from .formats import FORMATS, Format, format_names, get_format
from .hooks import PretrainedLoadCheckHook
from .init import SelfSupPretrainedInit
from .io import allow_safe_globals_everywhere, load_file, save_file
from .report import ConversionReport, KeyRecord
from .unwrap import Unwrapped, unwrap
from .version import __version__

allow_safe_globals_everywhere()

__all__ = [
    '__version__', 'FORMATS', 'Format', 'format_names', 'get_format',
    'unwrap', 'Unwrapped', 'detect_format', 'Detection', 'convert_state_dict',
    'convert_checkpoint', 'rename_key', 'ConversionResult', 'ConversionReport',
    'KeyRecord', 'load_file', 'save_file', 'load_and_convert', 'convert_file',
    'build_output', 'MMConvError', 'InputError', 'UnsafeCheckpointError',
    'ConversionError', 'UnknownFormatError', 'KeyCollisionError',
    'OutputError', 'SelfSupPretrainedInit', 'PretrainedLoadCheckHook'
]
