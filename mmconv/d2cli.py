# Copyright (c) mmconv contributors. All rights reserved.
"""Command lines for :mod:`mmconv.detectron2`: ``torchvision2d2.py``,
``d2_to_mmdet.py``, ``mmdet2torchvision.py`` (thin: argparse, one library
call, the report and the config changes to make)."""
import argparse
from typing import Callable, List, Optional

from .cli import _add_load_arguments, _run, _warn
from .errors import UnknownFormatError
from .formats import FORMATS

#: Output layouts (as :data:`mmconv.detectron2.TARGETS`, kept here so that
#: ``--help`` does not import torch).
TARGETS = ('mmdet', 'detectron2', 'torchvision')
#: Source formats added by :mod:`mmconv.detectron2`.
D2_NAMES = ('detectron2', 'caffe2')

__all__ = ['torchvision2d2_main', 'd2_to_mmdet_main',
           'mmdet2torchvision_main', 'add_resnet_arguments',
           'add_target_arguments', 'convert_command', 'run_convert_to']

#: Source formats: the detectron2 ones and every mmconv format.
SOURCE_FORMATS = ['auto', *D2_NAMES, *FORMATS]


def add_target_arguments(parser: argparse.ArgumentParser,
                         to_choices: Optional[List[str]] = None,
                         to_default: str = 'mmdet') -> None:
    """``--to`` (unless ``to_choices`` is empty), ``--style``, ``--keep-fc``.

    Also what ``mmconv convert`` adds to its own arguments.
    """
    if to_choices is None or to_choices:
        parser.add_argument('--to', choices=to_choices or list(TARGETS),
                            default=to_default,
                            help=f'output layout (default: {to_default})')
    else:
        parser.set_defaults(to=to_default)
    parser.add_argument('--style', choices=['auto', 'caffe', 'pytorch'],
                        default='auto',
                        help="style of the source ResNet: 'caffe' = stride "
                        "in the 1x1 conv (detectron2 STRIDE_IN_1X1: True, "
                        "MSRA models), 'pytorch' = in the 3x3 (torchvision); "
                        'default: decided from the file and reported')
    parser.add_argument('--keep-fc', action='store_true',
                        help='keep an ImageNet classifier (fc) in '
                        'detectron2/torchvision output')


def add_resnet_arguments(parser: argparse.ArgumentParser,
                         to_choices: List[str], to_default: str,
                         dst_help: str) -> None:
    """Arguments of the three converter scripts."""
    parser.add_argument('src', metavar='SRC', help='source checkpoint')
    parser.add_argument('dst', metavar='DST', help=dst_help)
    parser.add_argument('--from', dest='fmt', default='auto',
                        choices=SOURCE_FORMATS,
                        help='source format (default: auto-detect)')
    add_target_arguments(parser, to_choices, to_default)
    _add_load_arguments(parser)
    parser.add_argument('--force', action='store_true',
                        help='overwrite DST if it exists')
    parser.add_argument('--publish', action='store_true',
                        help='append the sha256 prefix to the file name')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='print every old -> new key')


def convert_command(args: argparse.Namespace,
                    convert_mmdet: Callable[[argparse.Namespace], None]
                    ) -> None:
    """``mmconv convert`` with ``--to``: MMDetection output from the formats
    of :mod:`mmconv.formats` keeps ``convert_mmdet`` (the existing path);
    other targets, detectron2/Caffe2 sources, and auto-detected files that
    path does not recognise go through :func:`run_convert_to`."""
    if args.to == 'mmdet' and args.fmt not in D2_NAMES:
        try:
            return convert_mmdet(args)
        except UnknownFormatError:
            if args.fmt != 'auto':
                raise
    run_convert_to(args)


def run_convert_to(args: argparse.Namespace) -> None:
    """Convert, write, print the report and the config changes."""
    from .detectron2 import convert_file_to
    written = convert_file_to(
        args.src, args.dst, args.to, args.fmt, style=args.style,
        keep_fc=args.keep_fc, select=args.select, prefix=args.prefix,
        unsafe=args.unsafe_load, force=args.force, publish=args.publish,
        out_format=getattr(args, 'out_format', None), warn=_warn)
    conv = written.conversion
    if args.verbose:
        print(conv.report.details())
    print(conv.summary())
    print(f'output:   {written.path}' +
          (f' (sha256 {written.sha256})' if written.sha256 else ''))
    print()
    print(conv.config_hints(written.path))


def _main(argv: Optional[List[str]], to_choices: List[str],
          to_default: str, description: str, dst_help: str) -> int:
    parser = argparse.ArgumentParser(description=description)
    add_resnet_arguments(parser, to_choices, to_default, dst_help)
    return _run(run_convert_to, parser.parse_args(argv))


def torchvision2d2_main(argv: Optional[List[str]] = None) -> int:
    """``torchvision2d2.py SRC DST.pkl``: torchvision (or any mmconv
    format) ResNet -> detectron2 ``.pkl``."""
    return _main(argv, [], 'detectron2',
                 'Convert a torchvision / self-supervised / MMDetection '
                 'ResNet into detectron2 weights (.pkl) and print the config '
                 'changes to use them.', 'output .pkl')


def d2_to_mmdet_main(argv: Optional[List[str]] = None) -> int:
    """``d2_to_mmdet.py SRC DST``: detectron2 / Caffe2 ResNet -> MMDetection
    (``--to torchvision`` for torchvision)."""
    return _main(argv, ['mmdet', 'torchvision', 'detectron2'], 'mmdet',
                 'Convert a detectron2 (.pkl/.pth, model zoo, detrex, bare) '
                 'or Caffe2 MSRA (R-50.pkl) ResNet into an MMDetection '
                 'backbone and print the config to use it.',
                 'output checkpoint (.pth)')


def mmdet2torchvision_main(argv: Optional[List[str]] = None) -> int:
    """``mmdet2torchvision.py SRC DST``: MMDetection ResNet backbone (or a
    whole detector, ``backbone.*``) -> torchvision (``--to detectron2`` for a
    detectron2 ``.pkl``)."""
    return _main(argv, ['torchvision', 'detectron2'], 'torchvision',
                 'Convert an MMDetection ResNet backbone back to torchvision '
                 '(or detectron2 with --to detectron2).',
                 'output file (.pth; .pkl for detectron2)')
