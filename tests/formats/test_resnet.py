# Copyright (c) mmconv contributors. All rights reserved.
"""The ResNet family (mmconv/formats/resnet.py) decides style and input
normalisation from a format's ``facts``, never from its name: toy formats
declared at run time with each kind of fact get the decision the fact says,
and the real formats declare theirs."""
from typing import Any, Iterator, Mapping

import pytest

from mmconv.formats.resnet import (MSRA_PIXEL, TORCHVISION_NETWORK,
                                   TORCHVISION_PIXEL, StyleFact)
from mmconv.pipeline import FORMATS, convert_state_dict
from mmconv.spec import SourceFormat, register, unregister
from tests.fixtures.sources import torchvision_resnet50_state_dict


@pytest.fixture
def toy() -> Iterator:
    """``toy(facts)``: a ResNet format reading ``toy.*`` keys with those
    facts, registered for the test."""
    made = []

    def declare(facts: Mapping[str, Any]) -> str:
        name = f'toy_facts_{len(made)}'
        fmt = SourceFormat(name, 'resnet', 'toy', facts=facts,
                           rules=((r'^toy\.', '', 'backbone'), ),
                           sentinels=(rf'^{name}$', ))  # never detected
        register(fmt)
        made.append(fmt)
        return name

    yield declare
    unregister(*made)


def _convert(name: str, entries: Mapping[str, Any] = None, **options):
    sd = {f'toy.{k}': v for k, v in torchvision_resnet50_state_dict().items()
          if not k.startswith('fc.')}
    return convert_state_dict(sd, name, entries or {}, **options)


def _style_line(conv) -> str:
    return next(line for line in conv.lines if line.startswith('style:'))


def test_a_certain_style_fact_decides(toy):
    conv = _convert(toy({'style': StyleFact('caffe', '{format} says so')}))
    assert conv.meta['style'] == 'caffe' and conv.meta['stride_in_1x1']
    assert 'ASSUMED' not in _style_line(conv)
    assert f'{conv.format.name} says so' in _style_line(conv)
    assert conv.meta['pixel_mean'] == list(MSRA_PIXEL.mean)


def test_an_assumed_style_fact_yields_to_a_torchvision_author(toy):
    name = toy({'style': StyleFact('caffe', 'a default', assumed=True)})
    assumed = _convert(name)
    assert assumed.meta['style'] == 'caffe'
    assert '(ASSUMED)' in _style_line(assumed)
    authored = _convert(name, {'__author__': 'torchvision'})
    assert authored.meta['style'] == 'pytorch'
    assert '__author__' in _style_line(authored)


def test_a_pixel_fact_holds_whatever_the_style(toy):
    name = toy({'style': StyleFact('caffe', 'blobs'), 'pixel': MSRA_PIXEL})
    conv = _convert(name, style='pytorch')
    assert conv.meta['style'] == 'pytorch'
    assert conv.meta['input_format'] == 'BGR'
    assert conv.meta['pixel_mean'] == list(MSRA_PIXEL.mean)


def test_no_fact_is_mmdetections_assumed_default(toy):
    conv = _convert(toy({}))
    assert conv.meta['style'] == 'pytorch'
    assert '(ASSUMED)' in _style_line(conv)
    assert conv.meta['pixel_mean'] == list(TORCHVISION_PIXEL.mean)
    torchvision = _convert(toy(TORCHVISION_NETWORK))
    assert 'ASSUMED' not in _style_line(torchvision)


def test_the_real_formats_declare_their_style():
    styles = {n: f.facts['style'] for n, f in FORMATS.items()
              if f.family == 'resnet' and 'style' in f.facts}
    assert styles['caffe2'].style == 'caffe' and not styles['caffe2'].assumed
    assert styles['detectron2'].style == 'caffe'
    assert styles['detectron2'].assumed
    assert FORMATS['caffe2'].facts['pixel'] == MSRA_PIXEL
    assert all(styles[n] == TORCHVISION_NETWORK['style']
               for n in ('moco', 'swav', 'dino', 'torchvision'))
    assert 'style' not in FORMATS['mmdet'].facts
