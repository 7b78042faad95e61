# Copyright (c) mmconv contributors. All rights reserved.
"""File-level entry points: load → convert → save, shared by every CLI and
by the ``SelfSupPretrained`` initializer."""
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from .convert import ConversionResult, convert_checkpoint
from .io import check_destination, load_file, save_file
from .version import __version__

__all__ = ['load_and_convert', 'convert_file', 'build_output', 'Written']


def load_and_convert(src: str, fmt: str = 'auto', *,
                     select: Optional[str] = None, unsafe: bool = False,
                     prefix: Optional[str] = None, checkpoint: Any = None,
                     warn: Optional[Callable[[str], None]] = None
                     ) -> ConversionResult:
    """Load ``src`` safely and convert it.

    Args:
        src (str): Source checkpoint path.
        fmt (str): Format name or ``'auto'``.
        select (str, optional): ``'teacher'``/``'student'`` (DINO).
        unsafe (bool): Allow arbitrary pickles (trusted files only).
        prefix (str, optional): Convert only keys under this prefix.
        checkpoint (optional): Already-loaded content of ``src``.
        warn (callable, optional): Receives the ``unsafe`` warning.

    Returns:
        ConversionResult: Converted state dict and report.
    """
    if checkpoint is None:
        checkpoint = load_file(src, unsafe=unsafe, warn=warn)
    return convert_checkpoint(checkpoint, fmt, select, prefix)


def build_output(result: ConversionResult, src: str) -> Dict[str, Any]:
    """The object to save: ``{'state_dict': ..., 'meta': {...}}``.

    ``meta`` holds plain types only, so MMEngine's ``load_checkpoint`` reads
    the file under ``torch.load(weights_only=True)``.
    """
    meta = {'converter': 'mmconv', 'mmconv_version': __version__,
            'source_file': os.path.basename(os.fspath(src))}
    meta.update(result.report.to_meta())
    return {'state_dict': result.state_dict, 'meta': meta}


@dataclass
class Written:
    """A finished conversion.

    Attributes:
        result (ConversionResult): Converted weights and report.
        path (str): Final output path.
        sha256 (str | None): sha256 of the output file (with ``publish``).
    """

    result: ConversionResult
    path: str
    sha256: Optional[str]


def convert_file(src: str, dst: str, fmt: str = 'auto', *,
                 select: Optional[str] = None, unsafe: bool = False,
                 force: bool = False, out_format: Optional[str] = None,
                 publish: bool = False, prefix: Optional[str] = None,
                 warn: Optional[Callable[[str], None]] = None) -> Written:
    """Convert the checkpoint ``src`` and write it to ``dst`` atomically.

    The destination is checked before anything is loaded, so a refused
    destination costs nothing and nothing is written on any error.

    Args:
        src (str): Source checkpoint.
        dst (str): Output path (``.pth`` or ``.safetensors``).
        fmt (str): Format name or ``'auto'``. Defaults to ``'auto'``.
        select (str, optional): ``'teacher'``/``'student'`` (DINO).
        unsafe (bool): Allow arbitrary pickles (trusted files only).
        force (bool): Overwrite an existing ``dst``.
        out_format (str, optional): ``'pytorch'`` or ``'safetensors'``.
        publish (bool): Add the sha256 prefix to the file name.
        prefix (str, optional): Convert only keys under this prefix.
        warn (callable, optional): Receives the ``unsafe`` warning.

    Returns:
        Written: Result, final path and sha256.
    """
    check_destination(dst, src, force)
    result = load_and_convert(src, fmt, select=select, unsafe=unsafe,
                              prefix=prefix, warn=warn)
    path, sha = save_file(build_output(result, src), dst, src=src,
                          force=force, out_format=out_format, publish=publish)
    return Written(result, path, sha)
