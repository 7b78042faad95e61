# Copyright (c) mmconv contributors. All rights reserved.
"""Options are declared once (``spec.Request`` fields) and every face takes
them from that declaration: the flags of every converting command and
script, ``SelfSupPretrained``'s keywords, the registry's check of
``Family.options``."""
import argparse
from dataclasses import fields

import pytest

from mmconv.cli import PRESETS, build_parser, preset_main
from mmconv.pipeline import FAMILIES, OPTIONS, Request
from mmconv.spec import Family, register, unregister

#: A value other than the default for each option type.
_VALUES = {'select': 'student', 'prefix': 'backbone.', 'style': 'caffe',
           'keep_fc': True, 'keep_classes': True, 'window_size': 7}


def _argv(name: str) -> list:
    """Command-line spelling of ``_VALUES[name]``."""
    option, value = OPTIONS[name], _VALUES[name]
    return [option.flag] if value is True else [option.flag, str(value)]


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions
               if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def test_options_are_the_request_fields_that_declare_a_flag():
    declared = [f.name for f in fields(Request) if 'option' in f.metadata]
    assert list(OPTIONS) == declared
    assert set(_VALUES) == set(OPTIONS)  # a new option needs a value here
    for name, option in OPTIONS.items():
        assert option.name == name
        assert option.flag == '--' + name.replace('_', '-')
        assert option.default == getattr(Request(), name)


@pytest.mark.parametrize('command', ['convert', 'inspect'])
def test_every_option_is_a_flag_of_the_converting_commands(command):
    parser = _subparser(command)
    for name in OPTIONS:
        src = ['SRC', 'DST'] if command == 'convert' else ['SRC']
        args = parser.parse_args(src + _argv(name))
        request = Request(**{n: getattr(args, n) for n in OPTIONS})
        assert getattr(args, name) == _VALUES[name]
        assert request.given() == [name]
    defaults = parser.parse_args(['SRC', 'DST'] if command == 'convert'
                                 else ['SRC'])
    assert Request(**{n: getattr(defaults, n) for n in OPTIONS}).given() \
        == []


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_every_script_offers_every_option(preset, capsys):
    with pytest.raises(SystemExit) as exit_:
        preset_main(preset, ['--help'])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS.values():
        assert f'  {option.flag}' in text
    assert '--style {auto,caffe,pytorch}' in text


def test_bad_option_values_are_usage_errors(capsys):
    parser = _subparser('inspect')
    for argv in (['--style', 'bad'], ['--window-size', 'x'],
                 ['--select', 'nobody']):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(['SRC'] + argv)
        assert exit_.value.code == 2
        assert argv[0] in capsys.readouterr().err


def test_initializer_takes_exactly_the_initializer_options():
    pytest.importorskip('mmengine')
    from mmconv.init import SelfSupPretrainedInit
    taken = [name for name in OPTIONS if OPTIONS[name].initializer]
    assert taken == ['select', 'prefix']
    for name in OPTIONS:
        if name in taken:
            init = SelfSupPretrainedInit(checkpoint='x.pth',
                                         **{name: _VALUES[name]})
            assert getattr(init, name) == _VALUES[name]
        else:
            with pytest.raises(TypeError, match=repr(name)):
                SelfSupPretrainedInit(checkpoint='x.pth',
                                      **{name: _VALUES[name]})
    init = SelfSupPretrainedInit(checkpoint='x.pth')
    assert (init.select, init.prefix) == (None, None)


def test_register_refuses_a_family_with_an_undeclared_option():
    toy = Family('toy_unknown_option', 'Toy', options=('prefix', 'nope'))
    with pytest.raises(ValueError, match='nope'):
        register(toy)
    unregister(toy)


def test_option_families_follow_the_family_declarations():
    for name, option in OPTIONS.items():
        assert option.families() == tuple(
            f.name for f in FAMILIES.values() if name in f.options)
    assert 'resnet' in OPTIONS['style'].families()
    assert 'resnet' not in OPTIONS['keep_classes'].families()
