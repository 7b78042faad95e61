# Copyright (c) mmconv contributors. All rights reserved.
"""The ``mmconv`` command and the ``tools/model_converters`` scripts.

Only argparse and the format table are imported at start-up, so ``--help``
costs little more than starting Python; torch is imported when a command
runs.
"""
import argparse
import sys
from typing import Callable, List, Optional, Sequence

from .errors import (MMConvError, OutputError, UnknownFormatError,
                     UsageError)
from .formats import FORMATS

__all__ = ['main', 'selfsup2mmdet_main', 'add_convert_arguments']

EPILOG = ('Use the output in an MMDetection config with\n'
          "  model = dict(backbone=dict(init_cfg=dict(type='Pretrained', "
          "checkpoint='DST')))\n"
          'or skip this step: custom_imports=dict(imports=[\'mmconv\']) and\n'
          "  init_cfg=dict(type='SelfSupPretrained', checkpoint='SRC').")


def _format_help() -> str:
    """One line per format for ``--help``."""
    return 'source format (default: auto-detect): ' + '; '.join(
        f'{f.name}={f.title.split(" (")[0]}' for f in FORMATS.values())


def add_convert_arguments(parser: argparse.ArgumentParser,
                          format_flag: str = '--selfsup',
                          extra_formats: Sequence[str] = ()) -> None:
    """Add the arguments shared by every conversion command."""
    parser.add_argument('src', metavar='SRC', help='source checkpoint')
    parser.add_argument('dst', metavar='DST',
                        help='output checkpoint (.pth, or .safetensors)')
    parser.add_argument(format_flag, dest='fmt', default='auto',
                        choices=['auto'] + list(FORMATS) +
                        list(extra_formats), help=_format_help())
    _add_load_arguments(parser)
    parser.add_argument('--force', action='store_true',
                        help='overwrite DST if it exists')
    parser.add_argument('--out-format', choices=['pytorch', 'safetensors'],
                        help='output format (default: from DST extension)')
    parser.add_argument('--publish', action='store_true',
                        help='append the sha256 prefix to the file name, as '
                        "MMDetection's publish_model.py does")
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='print every old -> new key')


def _add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments about reading the source."""
    parser.add_argument('--select', choices=['teacher', 'student'],
                        help='network to take from teacher/student '
                        'checkpoints such as DINO\'s (default: teacher)')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='allow arbitrary pickled objects in SRC: this '
                        'runs code from the file, use only for files you '
                        'trust')
    parser.add_argument('--prefix', help='convert only keys starting with '
                        "PREFIX, stripped (e.g. 'backbone.')")


def _run(func: Callable[[argparse.Namespace], None],
         args: argparse.Namespace) -> int:
    """Run a command; expected errors become one line and an exit code."""
    try:
        func(args)
    except MMConvError as err:
        message = str(err)
        src = getattr(args, 'src', None)
        if src and not isinstance(err, (OutputError, UsageError)) and \
                src not in message:
            message = f'{src}: {message}'  # every input error names the file
        print(f'error: {message}', file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print('error: interrupted; nothing was written', file=sys.stderr)
        return 130
    return 0


def _warn(message: str) -> None:
    """Print a warning line."""
    print(f'warning: {message}', file=sys.stderr)


def _convert(args: argparse.Namespace) -> None:
    """``convert``: load, convert, write, print the report."""
    from .api import convert_file
    written = convert_file(args.src, args.dst, args.fmt, select=args.select,
                           unsafe=args.unsafe_load, force=args.force,
                           out_format=args.out_format, publish=args.publish,
                           prefix=args.prefix, warn=_warn)
    report = written.result.report
    if args.verbose:
        print(report.details())
    print(report.summary())
    print(f'output:   {written.path}' +
          (f' (sha256 {written.sha256})' if written.sha256 else ''))


def _convert_to(args: argparse.Namespace) -> None:
    """``mmconv convert``: dispatch on the source format and ``--to``.

    Backbone formats to MMDetection go through ``_convert``; ``--to`` and
    detectron2 sources through :mod:`mmconv.d2cli`; DETR-family detectors
    through :mod:`mmconv.detr_cli`. With ``--from auto``, a file no backbone
    format recognises is tried as a DETR-family checkpoint before failing.
    """
    from .d2cli import convert_command
    from .detr_cli import DETR_FORMAT_NAMES, run as run_detr
    if args.fmt in DETR_FORMAT_NAMES or (args.keep_classes
                                         and args.fmt == 'auto'):
        return run_detr(_detr_args(args))  # --keep-classes: DETR family
    if args.keep_classes:
        raise UsageError('--keep-classes applies to DETR-family checkpoints '
                         f'only (--from {"|".join(DETR_FORMAT_NAMES)})')
    try:
        return convert_command(args, _convert)
    except UnknownFormatError as backbone_error:
        if args.fmt != 'auto':
            raise
        from .containers import unwrap
        from .detr import detect_detr_format
        from .io import load_file
        checkpoint = load_file(args.src, unsafe=args.unsafe_load)
        try:
            detect_detr_format(unwrap(checkpoint).state_dict)
        except UnknownFormatError:
            prefix = '' if str(backbone_error).startswith(
                args.src) else f'{args.src}: '
            raise UnknownFormatError(
                f'{prefix}{backbone_error}; not a DETR-family checkpoint '
                f'either ({", ".join(DETR_FORMAT_NAMES)})') from None
    run_detr(_detr_args(args))


def _detr_args(args: argparse.Namespace) -> argparse.Namespace:
    """``mmconv convert`` arguments as :func:`mmconv.detr_cli.run` takes
    them; options that do not apply to a whole detector are refused."""
    if args.to != 'mmdet':
        raise UsageError('DETR-family checkpoints convert to MMDetection '
                         'only: drop --to ' + args.to)
    for flag, value in (('--select', args.select), ('--prefix', args.prefix),
                        ('--keep-fc', args.keep_fc),
                        ('--style', args.style != 'auto')):
        if value:
            raise UsageError(f'{flag} does not apply to DETR-family '
                             'checkpoints: drop it')
    return args


def _inspect(args: argparse.Namespace) -> None:
    """``inspect``: detect the format and show what would be kept."""
    from .api import load_and_convert
    result = load_and_convert(args.src, args.fmt, select=args.select,
                              unsafe=args.unsafe_load, prefix=args.prefix,
                              warn=_warn)
    if args.verbose:
        print(result.report.details())
    print(f'file:     {args.src}')
    print(result.report.summary())


def _formats(args: argparse.Namespace) -> None:
    """``formats``: list the supported formats."""
    for f in FORMATS.values():
        print(f'{f.name:12s} {f.title}')
        if args.verbose:
            print(f'{"":12s}   {f.source}')


def build_parser() -> argparse.ArgumentParser:
    """The ``mmconv`` argument parser."""
    parser = argparse.ArgumentParser(
        prog='mmconv', description='Convert checkpoints for MMDetection.',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('convert', help='convert a checkpoint',
                       epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    from .d2cli import D2_NAMES, add_target_arguments
    from .detr_cli import DETR_FORMAT_NAMES
    add_convert_arguments(p, '--from',
                          extra_formats=(*D2_NAMES, *DETR_FORMAT_NAMES))
    add_target_arguments(p)  # --to {mmdet,detectron2,torchvision}, --style
    p.add_argument('--keep-classes', action='store_true',
                   help='DETR family: do not remap the 91/92 COCO-id '
                   'classifier rows to 80 classes (non-COCO models)')
    p.set_defaults(func=_convert_to)
    p = sub.add_parser('inspect', help='detect the format of a checkpoint '
                       'and show what would be kept')
    p.add_argument('src', metavar='FILE')
    p.add_argument('--from', dest='fmt', default='auto',
                   choices=['auto'] + list(FORMATS))
    _add_load_arguments(p)
    p.add_argument('-v', '--verbose', action='store_true')
    p.set_defaults(func=_inspect)
    p = sub.add_parser('formats', help='list the supported formats')
    p.add_argument('-v', '--verbose', action='store_true')
    p.set_defaults(func=_formats)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``mmconv`` console command."""
    args = build_parser().parse_args(argv)
    return _run(args.func, args)


def selfsup2mmdet_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``tools/model_converters/selfsup2mmdet.py``.

    Accepts MMDetection's ``selfsup2mmdet.py SRC DST --selfsup {moco,swav}``
    and every other mmconv format; ``--selfsup`` defaults to ``auto``.
    """
    parser = argparse.ArgumentParser(
        description='Convert a self-supervised pre-training checkpoint into '
        'MMDetection ResNet backbone weights.', epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_arguments(parser, '--selfsup')
    args = parser.parse_args(argv)
    return _run(_convert, args)
