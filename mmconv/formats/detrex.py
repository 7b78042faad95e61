# Copyright (c) mmconv contributors. All rights reserved.
"""detrex both ways: official DETR-family files -> detrex (``--to detrex``,
what detrex's own converters write) and detrex files -> MMDetection.

The official -> detrex tables (:data:`TO_DETREX`) are the renames of
IDEA-Research/detrex ``projects/{detr,deformable_detr,conditional_detr,
dn_deformable_detr}/converter.py`` (two-stage: ``convert_two_stage.py``)
written as :func:`~mmconv.reverse.rename` templates, with the class-row ops
of the MMDetection declarations (:mod:`.detr`): both remap the same COCO
rows. Every source tensor is kept, aliases and the keys the converters
leave un-renamed included; the output is ``{'model': state_dict}``.

A detrex file is read back by reversing that table (detrex -> official
names, rows already remapped) and then applying the official format's
MMDetection table without its row ops (:func:`detrex_format`): no third
table is written by hand.
"""
from typing import Any, Dict, Tuple

from ..reverse import rename, reverse_rules
from ..spec import Rule, SourceFormat, Target, register
from .detr import (CONDITIONAL_DETR_CLASSES, DETR_CLASSES,
                   DEFORMABLE_DETR_CLASSES, DETR_FORMATS,
                   TWO_STAGE_PROPOSAL_CLASSES, coco_classes)
from .resnet import DETECTRON2_NAMES

__all__ = ['TO_DETREX', 'DETREX_TARGET', 'DETREX_FORMATS', 'detrex_format']

_ENC = 'transformer.encoder.layers.<layer>.'
_DEC = 'transformer.decoder.layers.<layer>.'

#: torchvision ResNet under ``backbone.0.body.`` -> detectron2 names under
#: ``backbone.`` (the detectron2 ResNet table read backwards).
_BACKBONE: Tuple[Rule, ...] = tuple(
    rename('backbone.0.body.' + Rule(*r).template[0],
           'backbone.' + Rule(*r).template[1], f'backbone: {r.reason}')
    for r in reverse_rules(DETECTRON2_NAMES))


def _same(*templates: str, reason: str, ops: Tuple = ()) -> Tuple[Rule, ...]:
    """Keys the converter keeps under their own name."""
    return tuple(rename(t, t, reason, ops=ops,
                        unless='keep_classes' if ops else None)
                 for t in templates)


def _ffn(layer: str, norms: Tuple[int, ...]) -> Tuple[Rule, ...]:
    """FFN linears and ``norm1..3`` -> ``norms.J`` of one layer template."""
    return (
        rename(layer + 'linear1.', layer + 'ffns.0.layers.0.0.', 'FFN linear1'),
        rename(layer + 'linear2.', layer + 'ffns.0.layers.1.', 'FFN linear2'),
    ) + tuple(rename(f'{layer}norm{i}.', f'{layer}norms.{j}.', f'norm{i}')
              for i, j in enumerate(norms, 1))


# fmt: off
_DETR_ENCODER = (
    rename(_ENC + 'self_attn.', _ENC + 'attentions.0.attn.', 'encoder self-attention'),
) + _ffn(_ENC, (0, 1))

_DEFORMABLE_LAYERS = (
    rename(_ENC + 'self_attn.', _ENC + 'attentions.0.', 'encoder deformable attention'),
) + _ffn(_ENC, (0, 1)) + (
    rename(_DEC + 'self_attn.',  _DEC + 'attentions.0.attn.', 'decoder self-attention'),
    rename(_DEC + 'cross_attn.', _DEC + 'attentions.1.', 'decoder deformable cross-attention'),
) + _ffn(_DEC, (1, 0, 2)) + (  # detrex swaps norm1/norm2
    rename('transformer.level_embed', 'transformer.level_embeds', 'level embedding'),
)

_INPUT_PROJ = tuple(
    rename(f'input_proj.<level:[0-2]>.{i}.', f'neck.convs.<level>.{n}.', f'input projection {n}')
    for i, n in ((0, 'conv'), (1, 'norm'))
) + tuple(
    rename(f'input_proj.3.{i}.', f'neck.extra_convs.0.{n}.', f'extra level {n}')
    for i, n in ((0, 'conv'), (1, 'norm')))

#: Deformable DETR branches: ``class_embed.N`` rows as MMDetection's (the
#: two-stage proposal branch 6 by position), the rest under its own name.
_DEFORMABLE_HEADS = tuple(
    rename(f'{p}class_embed.6.', f'{p}class_embed.6.', 'classifier branch 6',
           ops=TWO_STAGE_PROPOSAL_CLASSES.ops, unless='keep_classes')
    for p in ('', 'transformer.decoder.')
) + _same('class_embed.<branch>.', 'transformer.decoder.class_embed.<branch>.',
          reason='classifier of decoder layer N', ops=(DEFORMABLE_DETR_CLASSES, )
) + _same('bbox_embed.<branch>.', 'transformer.decoder.bbox_embed.<branch>.',
          reason='box MLP of decoder layer N')

TO_DETREX: Dict[str, Tuple[Rule, ...]] = {
    'detr': _BACKBONE + _DETR_ENCODER + (
        rename(_DEC + 'self_attn.',      _DEC + 'attentions.0.attn.', 'decoder self-attention'),
        rename(_DEC + 'multihead_attn.', _DEC + 'attentions.1.attn.', 'decoder cross-attention'),
        rename('transformer.decoder.norm.', 'transformer.decoder.post_norm_layer.', 'decoder final norm'),
    ) + _ffn(_DEC, (0, 1, 2)) + _same(
        'class_embed.', reason='classifier (92 -> 81 rows: 80 classes, no-object last)',
        ops=(DETR_CLASSES, )
    ) + _same('bbox_embed.', 'query_embed.', 'input_proj.', reason='kept as is'),
    'deformable_detr': _BACKBONE + _DEFORMABLE_LAYERS + _INPUT_PROJ + (
        rename('query_embed.', 'query_embedding.', 'object queries'),
    ) + _DEFORMABLE_HEADS + _same(
        'transformer.reference_points.', 'transformer.enc_output.',
        'transformer.enc_output_norm.', 'transformer.pos_trans.',
        'transformer.pos_trans_norm.', reason='kept as is'),
    'conditional_detr': _BACKBONE + _DETR_ENCODER + (
        rename(_ENC + 'activation.', _ENC + 'ffns.0.layers.0.1.', 'encoder activation'),
    ) + tuple(
        rename(f'{_DEC}{a}_{p}_proj.', f'{_DEC}attentions.{i}.{q}_proj.', f'decoder {a} {p} projection')
        for a, i in (('sa', 0), ('ca', 1))
        for p, q in (('qcontent', 'query_content'), ('qpos', 'query_pos'),
                     ('kcontent', 'key_content'), ('kpos', 'key_pos'),
                     ('v', 'value'), ('qpos_sine', 'query_pos_sine'))
        if not (a == 'sa' and p == 'qpos_sine')
    ) + (
        rename(_DEC + 'self_attn.out_proj.',  _DEC + 'attentions.0.out_proj.', 'decoder self-attention output'),
        rename(_DEC + 'cross_attn.out_proj.', _DEC + 'attentions.1.out_proj.', 'decoder cross-attention output'),
        rename(_DEC + 'activation.', _DEC + 'ffns.0.layers.0.1.', 'decoder activation'),
        rename('transformer.decoder.norm.', 'transformer.decoder.post_norm_layer.', 'decoder final norm'),
    ) + _ffn(_DEC, (0, 1, 2)) + _same(
        'class_embed.', reason='classifier (91 -> 80 rows)', ops=(CONDITIONAL_DETR_CLASSES, )
    ) + _same('bbox_embed.', 'query_embed.', 'input_proj.',
              'transformer.decoder.query_scale.', 'transformer.decoder.ref_point_head.',
              reason='kept as is'),
    'dn_deformable_detr': _BACKBONE + _DEFORMABLE_LAYERS + _INPUT_PROJ + (
        rename('label_enc.', 'label_encoder.', 'denoising label embedding (92 -> 81 rows: 80 classes, then the extra row)',
               ops=(coco_classes(True, '92 label_enc rows -> 80 classes + the last row (detrex label_encoder)'), ),
               unless='keep_classes'),
    ) + _DEFORMABLE_HEADS + _same(
        'tgt_embed.', 'refpoint_embed.', 'transformer.decoder.query_scale.',
        'transformer.decoder.ref_point_head.', reason='kept as is'),
}
# fmt: on


def _names_only(rules: Tuple[Rule, ...]) -> Tuple[Rule, ...]:
    """``rules`` without their row ops (a detrex file's rows are already
    remapped)."""
    return tuple(Rule(*r)._replace(ops=()) if Rule(*r).unless ==
                 'keep_classes' else Rule(*r) for r in rules)


def detrex_format(official: str, sentinels: Tuple[str, ...]
                  ) -> SourceFormat:
    """The detrex layout of the official format ``official``: its table
    read backwards (detrex -> official names), then the official format's
    MMDetection table without row ops."""
    base = {f.name: f for f in DETR_FORMATS}[official]
    facts: Dict[str, Any] = dict(base.facts, detrex=True)
    return SourceFormat(
        f'detrex_{official}', 'detr', f'detrex {base.title}',
        rules=reverse_rules(_names_only(TO_DETREX[official])),
        then=_names_only(base.rules), strict=True, sentinels=sentinels,
        containers=('model', ),
        source=f'IDEA-Research/detrex: what its {official} converter writes '
        "({'model': state_dict}), and detrex training checkpoints",
        facts=facts)


_STEM = r'^backbone\.stem\.conv1\.weight$'
# fmt: off
DETREX_FORMATS: Tuple[SourceFormat, ...] = (
    detrex_format('dn_deformable_detr', (
        _STEM, r'^label_encoder\.weight$', r'^transformer\.level_embeds$',
        r'^transformer\.encoder\.layers\.0\.attentions\.0\.sampling_offsets\.weight$')),
    detrex_format('deformable_detr', (
        _STEM, r'^transformer\.level_embeds$',
        r'^transformer\.encoder\.layers\.0\.attentions\.0\.sampling_offsets\.weight$')),
    detrex_format('conditional_detr', (
        _STEM, r'^class_embed\.weight$',
        r'^transformer\.decoder\.layers\.0\.attentions\.1\.query_pos_sine_proj\.weight$')),
    detrex_format('detr', (
        _STEM, r'^class_embed\.weight$', r'^input_proj\.weight$',
        r'^transformer\.decoder\.layers\.0\.attentions\.1\.attn\.in_proj_weight$')),
)
# fmt: on

#: ``--to detrex``: the official formats of :data:`TO_DETREX` only.
DETREX_TARGET = Target(
    'detrex', 'detrex (what its official-repository converters write)',
    format_rules=tuple(TO_DETREX.items()),
    build=lambda conv, meta: {'model': conv.state_dict})

register(DETREX_TARGET, *DETREX_FORMATS)
