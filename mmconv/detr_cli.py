# Copyright (c) mmconv contributors. All rights reserved.
"""Command line of :mod:`mmconv.detr` (``detr_family2mmdet.py``).

Only argparse is imported at start-up, so ``--help`` costs little more than
starting Python; torch and :mod:`mmconv.detr` are imported when a command
runs.
"""
import argparse
from typing import List, Optional

__all__ = ['DETR_FORMAT_NAMES', 'build_parser', 'run', 'main']

#: Keys of :data:`mmconv.detr.DETR_FORMATS`, in detection order (kept here so
#: that ``--help`` does not import torch; a test checks they agree).
DETR_FORMAT_NAMES = ('dn_deformable_detr', 'deformable_detr',
                     'conditional_detr', 'detr')

EPILOG = ('Build the model from the printed config and load the output with\n'
          "  load_from='DST'   (or init_cfg=dict(type='Pretrained', "
          "checkpoint='DST'))\n"
          'Deformable DETR family: use configs/detr_family/*_official_coco.py '
          '(neck bias=True).')


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """Arguments of ``detr_family2mmdet.py``."""
    parser = argparse.ArgumentParser(
        prog=prog, description='Convert an official DETR / Deformable DETR / '
        'Conditional DETR / DN-Deformable-DETR checkpoint into an MMDetection '
        '3.x detector checkpoint.', epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', metavar='SRC', help='official checkpoint')
    parser.add_argument('dst', metavar='DST',
                        help='output checkpoint (.pth, or .safetensors)')
    parser.add_argument('--from', dest='fmt', default='auto',
                        choices=['auto', *DETR_FORMAT_NAMES],
                        help='source format (default: auto-detect)')
    parser.add_argument('--keep-classes', action='store_true',
                        help='do not remap the 91/92 COCO-id classifier rows '
                        'to 80 classes (non-COCO models)')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='allow arbitrary pickled objects in SRC (trusted '
                        'files only)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite DST if it exists')
    parser.add_argument('--out-format', choices=['pytorch', 'safetensors'])
    parser.add_argument('--publish', action='store_true',
                        help='append the sha256 prefix to the file name')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='print every old -> new key')
    return parser


def run(args: argparse.Namespace) -> None:
    """Convert as ``args`` say and print the report."""
    from .cli import _warn
    from .detr import convert_detr_file
    written = convert_detr_file(
        args.src, args.dst, args.fmt, keep_classes=args.keep_classes,
        unsafe=args.unsafe_load, force=args.force,
        out_format=args.out_format, publish=args.publish, warn=_warn)
    if args.verbose:
        print(written.conversion.report.details())
    print(written.conversion.summary())
    print(f'output:   {written.path}' +
          (f' (sha256 {written.sha256})' if written.sha256 else ''))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``tools/model_converters/detr_family2mmdet.py``."""
    from .cli import _run
    args = build_parser().parse_args(argv)
    return _run(run, args)
