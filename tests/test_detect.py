# Copyright (c) mmconv contributors. All rights reserved.
"""Format detection and unwrapping."""
import argparse

import pytest
import torch

from mmconv import (ConversionError, InputError, UnknownFormatError,
                    detect_format, format_names, unwrap)


def test_unknown_layout_lists_formats_and_keys():
    """The error names every supported format and the first keys seen."""
    sd = {'encoder.blocks.0.attn.qkv.weight': torch.zeros(1)}
    with pytest.raises(UnknownFormatError) as err:
        detect_format(sd)
    msg = str(err.value)
    assert 'encoder.blocks.0.attn.qkv.weight' in msg
    for name in format_names():
        assert name in msg
    assert '\n' not in msg


def test_unwrap_paths():
    """Containers are found where each source saves them."""
    t = {'w': torch.zeros(1)}
    assert unwrap(t).where == 'checkpoint'
    assert unwrap({'state_dict': t, 'epoch': 1}).ignored == ['epoch']
    assert unwrap({'model': t, 'optimizer': {}}).where == "checkpoint['model']"
    vissl = {'classy_state_dict': {'base_model': {'model': {
        'trunk': t, 'heads': {'0.weight': torch.zeros(1)}}}}}
    got = unwrap(vissl)
    assert got.where == ("checkpoint['classy_state_dict']['base_model']"
                         "['model']['trunk']")
    assert 'classy_state_dict.base_model.model.heads' in got.ignored


def test_unwrap_teacher_student():
    """DINO: teacher by default, student on request, args ignored."""
    ckpt = {'teacher': {'a': torch.zeros(1)}, 'student': {'a': torch.ones(1)},
            'args': argparse.Namespace(arch='resnet50'), 'epoch': 100}
    assert unwrap(ckpt).state_dict['a'].item() == 0
    assert unwrap(ckpt, 'student').state_dict['a'].item() == 1
    assert 'student' in unwrap(ckpt).ignored
    with pytest.raises(ConversionError, match='no teacher/student'):
        unwrap({'state_dict': {'a': torch.zeros(1)}}, 'student')


@pytest.mark.parametrize('obj,match', [
    ({}, 'empty'),
    ({'a': 1, 'b': 'x'}, 'holds no tensors'),
    ([torch.zeros(1)], 'not a dict of tensors'),
    ({'state_dict': {}}, 'empty'),
])
def test_unwrap_refuses_non_checkpoints(obj, match):
    """Empty dicts, non-tensor dicts and lists are clear input errors."""
    with pytest.raises(InputError, match=match):
        unwrap(obj)
