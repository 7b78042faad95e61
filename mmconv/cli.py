# Copyright (c) mmconv contributors. All rights reserved.
"""The ``mmconv`` command and the presets behind ``tools/model_converters/*``:
one argument set built from the registry and :data:`~mmconv.spec.OPTIONS`,
one pipeline. Start-up imports no torch, so ``--help`` stays light. Usage
and exit codes: README.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from .errors import CheckFailedError, MMConvError, OutputError, UsageError
from .pipeline import FAMILIES, FORMATS, OPTIONS, TARGETS
from .version import __version__

__all__ = ['main', 'PRESETS', 'Preset', 'preset_main', 'build_parser']

EPILOG = ('Use an MMDetection output in a config with\n'
          "  model = dict(backbone=dict(init_cfg=dict(type='Pretrained', "
          "checkpoint='DST')))   # or load_from='DST' for a detector\n"
          'or skip this step: custom_imports=dict(imports=[\'mmconv\']) and\n'
          "  init_cfg=dict(type='SelfSupPretrained', checkpoint='SRC').\n"
          'SRC may be a file, a Hugging Face save_pretrained or\n'
          'torch.distributed.checkpoint folder, hf://ORG/NAME[@REV], an '
          'http(s):// URL or an MMEngine scheme (read weights-only).\n'
          'Exit codes: 2 usage, 3 input, 4 unsafe '
          'input, 5 conversion, 6 output, 7 check failed.')


@dataclass(frozen=True)
class Preset:
    """A converter script: ``mmconv convert`` with other defaults.

    Args:
        description (str): ``--help`` text.
        targets (tuple[str], optional): ``--to`` choices; None: every
            target; empty: no ``--to`` (always ``default_target``).
        default_target (str, optional): ``--to`` default; None: the
            detected family's default.
        format_flags (tuple[str]): Flags naming the source format.
        families (tuple[str]): The families it reads (``--from`` choices
            and auto-detection); empty: every family.
    """

    description: str
    targets: Optional[Tuple[str, ...]] = None
    default_target: Optional[str] = None
    format_flags: Tuple[str, ...] = ('--from', )
    families: Tuple[str, ...] = ()


#: The scripts of ``tools/model_converters/``.
PRESETS = {
    'selfsup2mmdet': Preset(
        'Convert a self-supervised pre-training checkpoint (or any format '
        'mmconv reads) into MMDetection weights; MMDetection\'s '
        'selfsup2mmdet.py arguments (SRC DST --selfsup moco) work.',
        targets=(), default_target='mmdet',
        format_flags=('--selfsup', '--from'), families=('resnet', )),
    'torchvision2d2': Preset(
        'Convert a torchvision / self-supervised / MMDetection ResNet into '
        'detectron2 weights (.pkl) and print the config changes to use '
        'them.', targets=(), default_target='detectron2',
        families=('resnet', )),
    'd2_to_mmdet': Preset(
        'Convert a detectron2 (.pkl/.pth, model zoo, detrex, bare), Caffe2 '
        'MSRA (R-50.pkl) or Detectron1 ResNet into an MMDetection backbone '
        'and print the config to use it.',
        targets=('mmdet', 'torchvision', 'detectron2'),
        default_target='mmdet', families=('resnet', )),
    'mmdet2torchvision': Preset(
        'Convert an MMDetection ResNet backbone (or a whole detector, '
        'backbone.*) back to torchvision (or detectron2 with --to '
        'detectron2).', targets=('torchvision', 'detectron2'),
        default_target='torchvision', families=('resnet', )),
    'detr_family2mmdet': Preset(
        'Convert an official DETR / Deformable DETR / Conditional DETR / '
        'DN-Deformable-DETR checkpoint into an MMDetection 3.x detector '
        'checkpoint.', targets=(), default_target='mmdet',
        families=('detr', )),
}


def _formats_of(preset: Preset) -> List[str]:
    """Names of the formats a preset reads."""
    return [f.name for f in FORMATS.values()
            if not preset.families or f.family in preset.families]


def _add_source_arguments(parser: argparse.ArgumentParser,
                          preset: Preset) -> None:
    """The source format and the options that select what to convert."""
    names = _formats_of(preset)
    parser.add_argument(
        *preset.format_flags, dest='fmt', default='auto',
        choices=['auto', *names], metavar='FORMAT',
        help='source format (default: auto-detect): ' + '; '.join(
            f'{n}={FORMATS[n].title.split(" (")[0]}' for n in names))
    parser.set_defaults(families=preset.families)
    for option in OPTIONS.values():  # declared once, in spec.Request
        parser.add_argument(option.flag, **option.argparse_kwargs())
    parser.add_argument('--unsafe-load', action='store_true',
                        help='allow arbitrary pickled objects in SRC: this '
                        'runs code from the file, use only for files you '
                        'trust')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='print every old -> new key')
    parser.add_argument('--json', action='store_true',
                        help='print a machine-readable report instead')


def _add_target_argument(parser: argparse.ArgumentParser,
                         preset: Preset) -> None:
    """``--to`` as the preset offers it."""
    if preset.targets == ():
        parser.set_defaults(to=preset.default_target)
        return
    choices = list(preset.targets or TARGETS)
    default = preset.default_target
    parser.add_argument('--to', choices=choices, default=default,
                        help='output layout (default: ' +
                        (default or "the family's: mmdet") + ')')


def _add_convert_arguments(parser: argparse.ArgumentParser,
                           preset: Preset) -> None:
    """Every argument of a conversion command."""
    parser.add_argument('src', metavar='SRC',
                        help='source checkpoint (file, folder, hf:// or URL)')
    parser.add_argument('dst', metavar='DST', help='output checkpoint '
                        '(.pth, .safetensors; .pkl for detectron2)')
    _add_source_arguments(parser, preset)
    _add_target_argument(parser, preset)
    parser.add_argument('--force', action='store_true',
                        help='overwrite DST if it exists')
    parser.add_argument('--out-format', choices=['pytorch', 'safetensors'],
                        help='output format (default: from DST extension)')
    parser.add_argument('--publish', action='store_true',
                        help='append the sha256 prefix to the file name, as '
                        "MMDetection's publish_model.py does")


def _request(args: argparse.Namespace):
    """The :class:`~mmconv.pipeline.Request` the arguments describe."""
    from .pipeline import Request
    return Request(format=args.fmt, target=args.to,
                   families=tuple(args.families),
                   **{name: getattr(args, name) for name in OPTIONS})


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


def _print_conversion(conv, verbose: bool) -> None:
    """The report (every key with ``verbose``) and the summary."""
    if verbose:
        print(conv.report.details())
    print(conv.summary())


def _json_report(conv, src: str, **extra) -> str:
    """The conversion as JSON: format, target, every key's fate, meta."""
    rep = conv.report
    return json.dumps(dict(
        source=src, format=rep.format, family=conv.family.name,
        detection=rep.detection, target=conv.target.name, where=rep.where,
        ignored_entries=rep.ignored_entries,
        kept=[[r.old, r.new] for r in rep.kept],
        aliases=[[r.old, r.new] for r in rep.aliases],
        dropped=[[r.old, r.reason] for r in rep.dropped],
        changed=[[k, list(b), list(a), w] for k, b, a, w in conv.changed],
        notes=conv.notes, meta=conv.to_meta(), **extra), indent=1)


def _convert(args: argparse.Namespace) -> None:
    """``convert``: load once, convert, write, print the report."""
    from .pipeline import convert_file
    written = convert_file(args.src, args.dst, _request(args),
                           unsafe=args.unsafe_load, force=args.force,
                           out_format=args.out_format, publish=args.publish,
                           warn=_warn)
    conv = written.conversion
    if args.json:
        print(_json_report(conv, args.src, output=written.path,
                           sha256=written.sha256))
        return
    _print_conversion(conv, args.verbose)
    print(f'output:   {written.path}' +
          (f' (sha256 {written.sha256})' if written.sha256 else ''))
    hints = conv.config_hints(written.path)
    if hints:
        print()
        print(hints)


def _inspect(args: argparse.Namespace) -> None:
    """``inspect``: detect the format and show what would be kept."""
    from .pipeline import load_and_convert
    conv = load_and_convert(args.src, _request(args),
                            unsafe=args.unsafe_load, warn=_warn)
    if args.json:
        print(_json_report(conv, args.src))
        return
    print(f'file:     {args.src}')
    _print_conversion(conv, args.verbose)


def _check(args: argparse.Namespace) -> None:
    """``check``: initialise a config's model, report where weights are
    from; fail (exit 7) on a pretrained module left random."""
    from .stack import require_mmengine
    require_mmengine('mmconv check')
    from .check import check_config, parse_cfg_options
    from .provenance import format_table
    import contextlib
    # --json: stdout is the JSON only (MMEngine's logger, created on first
    # use, writes to what sys.stdout is then)
    with contextlib.redirect_stdout(sys.stderr) if args.json else \
            contextlib.nullcontext():
        result = check_config(args.config, args.checkpoint,
                              parse_cfg_options(args.cfg_options or []))
    if args.json:
        print(json.dumps(dict(config=args.config, rows=result.rows,
                              problems=result.problems,
                              loaded_file=result.loaded_file), indent=1))
    else:
        print(format_table(result))
    if result.problems:
        raise CheckFailedError(
            f'{args.config}: still at their random initialisation although '
            'configured to load a checkpoint: '
            f'{"; ".join(result.problems)}; check the checkpoint path and '
            "format (init_cfg=dict(type='SelfSupPretrained', ...) reads raw "
            'files)')


def _formats(args: argparse.Namespace) -> None:
    """``formats``: list every registered format, by family."""
    for family in FAMILIES.values():
        print(f'{family.title} (to: {", ".join(family.targets)}; options: '
              f'{", ".join(family.options) or "-"})')
        for f in FORMATS.values():
            if f.family != family.name:
                continue
            print(f'  {f.name:20s} {f.title}')
            if args.verbose and f.source:
                print(f'  {"":20s}   {f.source}')


def build_parser() -> argparse.ArgumentParser:
    """The ``mmconv`` argument parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog='mmconv', description='Convert checkpoints for MMDetection.',
        epilog=EPILOG, formatter_class=fmt)
    parser.add_argument('--version', action='version',
                        version=f'mmconv {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('convert', help='convert a checkpoint', epilog=EPILOG,
                       formatter_class=fmt)
    _add_convert_arguments(p, Preset('convert'))
    p.set_defaults(func=_convert)
    p = sub.add_parser('inspect', help='detect the format of a checkpoint '
                       'and show what would be kept')
    p.add_argument('src', metavar='SRC', help='checkpoint (file, folder, hf:// or URL)')
    _add_source_arguments(p, Preset('inspect'))
    _add_target_argument(p, Preset('inspect'))
    p.set_defaults(func=_inspect)
    p = sub.add_parser('check', help='initialise the model of an '
                       'MMDetection config (no data) and report, per module, '
                       'where its weights came from')
    p.add_argument('config', metavar='CONFIG', help='config file')
    p.add_argument('--checkpoint', help='apply this file after '
                   'initialisation, as load_from (default: the config\'s)')
    p.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE',
                   help='override config settings, as in mim train')
    p.add_argument('--json', action='store_true',
                   help='print a machine-readable report')
    p.set_defaults(func=_check)
    p = sub.add_parser('formats', help='list the supported formats')
    p.add_argument('-v', '--verbose', action='store_true',
                   help='also say where each layout comes from')
    p.set_defaults(func=_formats)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``mmconv`` console command."""
    args = build_parser().parse_args(argv)
    return _run(args.func, args)


def preset_main(name: str, argv: Optional[List[str]] = None) -> int:
    """Entry point of the converter script ``tools/model_converters/NAME.py``.

    Args:
        name (str): A key of :data:`PRESETS`.
        argv (list[str], optional): Arguments (default: ``sys.argv``).
    """
    preset = PRESETS[name]
    parser = argparse.ArgumentParser(
        prog=f'{name}.py', description=preset.description, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version',
                        version=f'mmconv {__version__}')
    _add_convert_arguments(parser, preset)
    return _run(_convert, parser.parse_args(argv))
