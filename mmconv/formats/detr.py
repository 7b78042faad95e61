# Copyright (c) mmconv contributors. All rights reserved.
"""DETR-family detectors (official repositories, transformers) ->
MMDetection 3.x detectors.

The ``detr`` family (:data:`DETR_FAMILY`, :data:`DETR_FORMATS`: DETR,
Deformable, Conditional, DN-/DAB-Deformable, DAB-DETR, DINO 4/5-scale) and
``detr_hf`` (:data:`DETR_HF_FORMATS`; RT-DETR refused). Rules: ``*_RULES``;
class rows: :func:`coco_classes`; verified against :data:`DETR_DETECTOR`
(:func:`detector_config`). Users: README, "DETR family (official
repositories -> MMDetection 3.x)".
"""
import re
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from ..errors import ConversionError
from ..ops import Concatenate, OpContext, SelectRows, When
from ..spec import (Conversion, Family, ModelConfig, Request, Rule,
                    SourceFormat, TargetModule, register)
from .resnet import resnet_depth

__all__ = [
    'COCO_CATEGORY_IDS', 'DETR_RULES', 'DEFORMABLE_DETR_RULES',
    'CONDITIONAL_DETR_RULES', 'DN_DEFORMABLE_DETR_RULES',
    'DAB_DETR_RULES', 'DAB_DEFORMABLE_DETR_RULES', 'DINO_4SCALE_RULES',
    'DINO_5SCALE_RULES', 'DETR_FAMILY', 'DETR_FORMATS', 'coco_classes',
    'PROPOSAL_OBJECTNESS', 'DINO_LABEL_EMBEDDING', 'detr_variant',
    'DETR_DETECTOR', 'FAMILY_CONFIG_MODELS', 'detector_config'
]

#: The 80 COCO category ids that MMDetection's ``CocoDataset`` numbers
#: 0..79 in this order (sorted ids; 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83
#: are unused ids of the 91-id space the official models classify).
COCO_CATEGORY_IDS: Tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42,
    43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90)
#: Rows of the official COCO classifiers: ids 0..90 (``num_classes = 91``).
COCO_NUM_IDS = 91
#: Decoder layers of the official models: the two-stage proposal heads are
#: branch 6, MMDetection's ``cls_branches[num_layers]`` (checked by
#: :func:`proposal_branch`).
OFFICIAL_DECODER_LAYERS = 6


# --- class rows: ops declared on the classifier rules ------------------------
def coco_classes(no_object: bool, what: str) -> SelectRows:
    """The op that turns classifier rows of the 91-id COCO space into
    MMDetection's 80 classes.

    The official models classify category *ids* (``num_classes = 91``: rows
    0..90, of which the 80 in :data:`COCO_CATEGORY_IDS` are used); DETR adds
    a no-object row at index 91. MMDetection numbers the 80 classes 0..79 in
    id order and, for softmax heads (``DETRHead``, over ``num_classes + 1``),
    puts no-object last; its sigmoid heads (over ``num_classes``:
    ``DeformableDETRHead``, ``ConditionalDETRHead`` ...) have no such row.

    Args:
        no_object (bool): The source has a no-object row (92 rows) and the
            target keeps it as row 80.
        what (str): The rows and the MMDetection head, for the report.

    Returns:
        SelectRows: ``(91|92, ...)`` -> ``(80, ...)``, or ``(81, ...)``
        with ``no_object``; another row count is refused (ConversionError
        naming ``--keep-classes``).
    """
    return SelectRows(
        COCO_CATEGORY_IDS + ((COCO_NUM_IDS, ) if no_object else ()),
        COCO_NUM_IDS + int(no_object),
        f'remap_coco_classes(no_object={no_object}): {what}',
        'classifier has {rows} rows, not the {expected} of an official COCO '
        'model (ids 0..90' + (' + no-object' if no_object else '') + '); '
        'use --keep-classes for models trained on other datasets')


DETR_CLASSES = coco_classes(
    True, '92 COCO-id rows -> 80 classes + no-object last (DETRHead, softmax)')
CONDITIONAL_DETR_CLASSES = coco_classes(
    False, '91 COCO-id rows -> 80 classes (ConditionalDETRHead, sigmoid)')
DEFORMABLE_DETR_CLASSES = coco_classes(
    False, '91 COCO-id rows -> 80 classes (DeformableDETRHead, sigmoid)')
DAB_DETR_CLASSES = coco_classes(
    False, '91 COCO-id rows -> 80 classes (DABDETRHead, sigmoid)')
#: DINO: every branch, the two-stage proposal one included (both codes
#: rank proposals by the best class).
DINO_CLASSES = coco_classes(
    False, '91 COCO-id rows -> 80 classes (DINOHead, sigmoid; the proposal '
    'branch too: both codes rank proposals by their best class)')

#: DINO's denoising label embedding: the official ``label_enc`` has
#: ``dn_labelbook_size + 1 = 92`` rows, one per COCO id 0..90 (ground-truth
#: and noised labels index it by id), then one row no code path of DINO
#: indexes (noise draws ids in ``[0, dn_labelbook_size)``); MMDetection's
#: ``CdnQueryGenerator`` embeds the 80 contiguous labels: row ``i`` = the
#: row of COCO id ``COCO_CATEGORY_IDS[i]``.
DINO_LABEL_EMBEDDING = SelectRows(
    COCO_CATEGORY_IDS, COCO_NUM_IDS + 1,
    'remap_label_embedding: 92 label_enc rows (COCO ids 0..90 + an unused '
    'row) -> 80 classes (CdnQueryGenerator.label_embedding)',
    'denoising label embedding has {rows} rows, not the {expected} of an '
    'official COCO model (ids 0..90 + one unused row); use --keep-classes '
    'for models trained on other datasets')

#: Two-stage Deformable DETR: the proposal branch (index = decoder layers)
#: is trained with every label set to 0 and ranks proposals by
#: ``logits[..., 0]`` (official code and MMDetection alike): row 0 is an
#: objectness score, not class id 0: its first 80 rows are kept by
#: position.
PROPOSAL_OBJECTNESS = SelectRows(
    tuple(range(len(COCO_CATEGORY_IDS))), COCO_NUM_IDS,
    'keep_objectness_rows: two-stage proposal classifier: row 0 '
    '(class-agnostic objectness, the only row either code uses) stays row 0; '
    'rows 0..79 kept by position',
    'two-stage proposal classifier has {rows} rows, not {expected}; use '
    '--keep-classes for non-COCO models')


def two_stage(ctx: OpContext) -> bool:
    """Whether the file is a two-stage model (it has the encoder proposal
    transform ``transformer.enc_output``)."""
    return 'transformer.enc_output.weight' in ctx.source


# --- rule groups shared by several formats -----------------------------------
_L = r'(\d+)'
_ENC = r'^transformer\.encoder\.layers\.' + _L
_DEC = r'^transformer\.decoder\.layers\.' + _L

# fmt: off
#: The official ResNet -> MMDetection ``ResNet``. FrozenBatchNorm2d (all
#: four repositories) stores weight, bias, running_mean and running_var, no
#: ``num_batches_tracked``: MMDetection's frozen ``BN``
#: (``requires_grad=False``, ``norm_eval=True``) computes the same and
#: PyTorch fills the missing counter on load, so a strict load misses no key.
BACKBONE_RULES: Tuple[Rule, ...] = (
    (r'^backbone\.0\.body\.fc\.', None,     'ImageNet classifier (not in the detector)'),
    (r'^backbone\.0\.body\.',  'backbone.', 'ResNet (backbone.0.body -> MMDetection ResNet; FrozenBatchNorm2d -> frozen BN)'),
    (r'^backbone\.1\.',        None,        'learned position embedding (--position_embedding learned): MMDetection uses sine encodings, NOT carried'),
)

#: DETR-style post-norm encoder layer: attn -> norm1 -> ffn -> norm2.
DETR_ENCODER_RULES: Tuple[Rule, ...] = (
    (_ENC + r'\.self_attn\.', r'encoder.layers.\1.self_attn.attn.', 'encoder self-attention (packed in_proj kept packed: MMDetection MultiheadAttention wraps nn.MultiheadAttention as .attn)'),
    (_ENC + r'\.linear1\.',   r'encoder.layers.\1.ffn.layers.0.0.', 'encoder FFN linear1'),
    (_ENC + r'\.linear2\.',   r'encoder.layers.\1.ffn.layers.1.',   'encoder FFN linear2'),
    (_ENC + r'\.norm1\.',     r'encoder.layers.\1.norms.0.',        'encoder norm after attention'),
    (_ENC + r'\.norm2\.',     r'encoder.layers.\1.norms.1.',        'encoder norm after FFN'),
)

#: FFN and norms of DETR/Conditional DETR decoder layers:
#: self-attn -> norm1 -> cross-attn -> norm2 -> ffn -> norm3.
_DETR_DECODER_TAIL: Tuple[Rule, ...] = (
    (_DEC + r'\.linear1\.',   r'decoder.layers.\1.ffn.layers.0.0.', 'decoder FFN linear1'),
    (_DEC + r'\.linear2\.',   r'decoder.layers.\1.ffn.layers.1.',   'decoder FFN linear2'),
    (_DEC + r'\.norm1\.',     r'decoder.layers.\1.norms.0.',        'decoder norm after self-attention'),
    (_DEC + r'\.norm2\.',     r'decoder.layers.\1.norms.1.',        'decoder norm after cross-attention'),
    (_DEC + r'\.norm3\.',     r'decoder.layers.\1.norms.2.',        'decoder norm after FFN'),
    (r'^transformer\.decoder\.norm\.', 'decoder.post_norm.',        'decoder final norm'),
)

def _detr_head(classes: SelectRows) -> Tuple[Rule, ...]:
    """DETR-style head: one classifier (its rows: ``classes``),
    MLP(256, 256, 4, 3) box head (MMDetection: reg_ffn = Linear-ReLU,
    Linear; ReLU; fc_reg)."""
    return (
        Rule(r'^class_embed\.',      'bbox_head.fc_cls.',          'classifier (rows remapped by remap_coco_classes)', ops=(classes, ), unless='keep_classes'),
        (r'^bbox_embed\.layers\.0\.', 'bbox_head.reg_ffn.layers.0.0.', 'box MLP layer 0'),
        (r'^bbox_embed\.layers\.1\.', 'bbox_head.reg_ffn.layers.1.',   'box MLP layer 1'),
        (r'^bbox_embed\.layers\.2\.', 'bbox_head.fc_reg.',             'box MLP output layer'),
        (r'^query_embed\.',          'query_embedding.',            'object queries'),
        (r'^input_proj\.',           'neck.convs.0.conv.',          'input projection (1x1 conv with bias = ChannelMapper conv, no norm)'),
    )


DETR_RULES: Tuple[Rule, ...] = BACKBONE_RULES + DETR_ENCODER_RULES + (
    (_DEC + r'\.self_attn\.',      r'decoder.layers.\1.self_attn.attn.',  'decoder self-attention (packed in_proj kept packed)'),
    (_DEC + r'\.multihead_attn\.', r'decoder.layers.\1.cross_attn.attn.', 'decoder cross-attention (packed in_proj kept packed)'),
) + _DETR_DECODER_TAIL + _detr_head(DETR_CLASSES)

#: Conditional DETR / DAB-DETR decoder attention: separate content and
#: position projections, one to one onto MMDetection's ConditionalAttention.
_CONDITIONAL_DECODER_ATTENTION: Tuple[Rule, ...] = tuple(
    (_DEC + rf'\.sa_{p}_proj\.', rf'decoder.layers.\1.self_attn.{p}_proj.', f'conditional self-attention {p} projection')
    for p in ('qcontent', 'qpos', 'kcontent', 'kpos', 'v')
) + (
    (_DEC + r'\.self_attn\.out_proj\.', r'decoder.layers.\1.self_attn.out_proj.', 'conditional self-attention output projection'),
) + tuple(
    (_DEC + rf'\.ca_{p}_proj\.', rf'decoder.layers.\1.cross_attn.{p}_proj.', f'conditional cross-attention {p} projection')
    for p in ('qcontent', 'qpos', 'kcontent', 'kpos', 'v', 'qpos_sine')
) + (
    (_DEC + r'\.cross_attn\.out_proj\.', r'decoder.layers.\1.cross_attn.out_proj.', 'conditional cross-attention output projection'),
)

CONDITIONAL_DETR_RULES: Tuple[Rule, ...] = BACKBONE_RULES + DETR_ENCODER_RULES + _CONDITIONAL_DECODER_ATTENTION + (
    (r'^transformer\.decoder\.query_scale\.',    'decoder.query_scale.',    'conditional spatial query scale MLP'),
    (r'^transformer\.decoder\.ref_point_head\.', 'decoder.ref_point_head.', 'reference point MLP'),
) + _DETR_DECODER_TAIL + _detr_head(CONDITIONAL_DETR_CLASSES)

#: Deformable DETR: multi-scale deformable attention has the same four
#: linears (sampling_offsets, attention_weights, value_proj, output_proj,
#: same output ordering) in the official op and in mmcv's.
_DEFORMABLE_LAYERS: Tuple[Rule, ...] = (
    (r'^transformer\.level_embed$', 'level_embed', 'level embedding'),
    (_ENC + r'\.self_attn\.', r'encoder.layers.\1.self_attn.', 'encoder deformable attention'),
    (_ENC + r'\.linear1\.',   r'encoder.layers.\1.ffn.layers.0.0.', 'encoder FFN linear1'),
    (_ENC + r'\.linear2\.',   r'encoder.layers.\1.ffn.layers.1.',   'encoder FFN linear2'),
    (_ENC + r'\.norm1\.',     r'encoder.layers.\1.norms.0.',        'encoder norm after attention'),
    (_ENC + r'\.norm2\.',     r'encoder.layers.\1.norms.1.',        'encoder norm after FFN'),
    # official decoder layer: self-attn -> norm2 -> cross-attn -> norm1 -> ffn -> norm3
    (_DEC + r'\.self_attn\.',  r'decoder.layers.\1.self_attn.attn.', 'decoder self-attention (packed in_proj kept packed)'),
    (_DEC + r'\.cross_attn\.', r'decoder.layers.\1.cross_attn.',     'decoder deformable cross-attention'),
    (_DEC + r'\.norm2\.',      r'decoder.layers.\1.norms.0.',        'decoder norm after self-attention (official norm2)'),
    (_DEC + r'\.norm1\.',      r'decoder.layers.\1.norms.1.',        'decoder norm after cross-attention (official norm1)'),
    (_DEC + r'\.norm3\.',      r'decoder.layers.\1.norms.2.',        'decoder norm after FFN'),
    (_DEC + r'\.linear1\.',    r'decoder.layers.\1.ffn.layers.0.0.', 'decoder FFN linear1'),
    (_DEC + r'\.linear2\.',    r'decoder.layers.\1.ffn.layers.1.',   'decoder FFN linear2'),
)

#: Two-stage memory transform (Deformable DETR and DINO).
_TWO_STAGE_MEMORY: Tuple[Rule, ...] = (
    (r'^transformer\.enc_output\.',       'memory_trans_fc.',     'two-stage memory transform'),
    (r'^transformer\.enc_output_norm\.',  'memory_trans_norm.',   'two-stage memory norm'),
)

_DEFORMABLE_TRANSFORMER: Tuple[Rule, ...] = _DEFORMABLE_LAYERS + (
    (r'^transformer\.reference_points\.', 'reference_points_fc.', 'reference points from query positions'),
) + _TWO_STAGE_MEMORY + (
    (r'^transformer\.pos_trans\.',        'pos_trans_fc.',        'two-stage proposal position transform'),
    (r'^transformer\.pos_trans_norm\.',   'pos_trans_norm.',      'two-stage proposal position norm'),
)

def _deformable_branches(classes: SelectRows) -> Tuple[Rule, ...]:
    """Heads per decoder layer (+1 for two-stage proposals):
    ``class_embed.N`` (its rows: ``classes``) / ``bbox_embed.N`` (MLP
    layers 0, 1, 2 = Sequential indices 0, 2, 4 of MMDetection's
    reg_branches). Deformable DETR registers modules under several names:
    without box refinement every ``class_embed.N`` is one ``nn.Linear``
    (each branch gets that tensor: MMDetection's branches are copies);
    with refinement / two-stage, ``transformer.decoder.*_embed`` are the
    head's ModuleLists registered a second time (aliases)."""
    return (
        Rule(r'^(?:transformer\.decoder\.)?class_embed\.(\d+)\.',      r'bbox_head.cls_branches.\1.',   'classifier of decoder layer N (rows remapped by remap_coco_classes)', ops=(classes, ), unless='keep_classes'),
        (r'^(?:transformer\.decoder\.)?bbox_embed\.(\d+)\.layers\.0\.', r'bbox_head.reg_branches.\1.0.', 'box MLP layer 0 of decoder layer N'),
        (r'^(?:transformer\.decoder\.)?bbox_embed\.(\d+)\.layers\.1\.', r'bbox_head.reg_branches.\1.2.', 'box MLP layer 1 of decoder layer N'),
        (r'^(?:transformer\.decoder\.)?bbox_embed\.(\d+)\.layers\.2\.', r'bbox_head.reg_branches.\1.4.', 'box MLP output layer of decoder layer N'),
    )


def _deformable_head(classes: SelectRows) -> Tuple[Rule, ...]:
    """Deformable DETR head: branches, queries, GN input projections."""
    return _deformable_branches(classes) + (
        (r'^query_embed\.', 'query_embedding.', 'object queries (position half, then content half)'),
        (r'^input_proj\.([0-2])\.0\.', r'neck.convs.\1.conv.', 'input projection conv (has a bias: the neck needs bias=True)'),
        (r'^input_proj\.([0-2])\.1\.', r'neck.convs.\1.gn.',   'input projection GroupNorm'),
        (r'^input_proj\.3\.0\.', 'neck.extra_convs.0.conv.',   'extra level 3x3/2 conv (has a bias: the neck needs bias=True)'),
        (r'^input_proj\.3\.1\.', 'neck.extra_convs.0.gn.',     'extra level GroupNorm'),
    )


_O = OFFICIAL_DECODER_LAYERS
#: Two-stage Deformable DETR / DAB-Deformable-DETR: branch 6 of a two-stage
#: file (6 decoder layers, checked by :func:`proposal_branch`) is the
#: proposal classifier: rows kept by position; otherwise decoder layer 6's.
TWO_STAGE_PROPOSAL_CLASSES = Rule(
    rf'^(?:transformer\.decoder\.)?class_embed\.{_O}\.', rf'bbox_head.cls_branches.{_O}.',
    f'classifier branch {_O}: the two-stage proposal classifier in two-stage files (rows kept by position), else that of decoder layer {_O} (rows remapped by remap_coco_classes)',
    ops=(When(two_stage, PROPOSAL_OBJECTNESS, DEFORMABLE_DETR_CLASSES, 'the file is two-stage'), ), unless='keep_classes')

DEFORMABLE_DETR_RULES: Tuple[Rule, ...] = (BACKBONE_RULES + _DEFORMABLE_TRANSFORMER + (TWO_STAGE_PROPOSAL_CLASSES, )
                                           + _deformable_head(DEFORMABLE_DETR_CLASSES))

#: Not carried from DN-Deformable-DETR (no MMDetection equivalent): its
#: queries are 4-d anchor boxes with 255-d content plus a denoising
#: indicator, and its decoder computes query positions with
#: ``ref_point_head``/``query_scale``; no MMDetection model has that
#: decoder (``DINO`` has no ``query_scale``, a final decoder norm and
#: two-stage queries), so the layers whose layouts are identical go into
#: ``DeformableDETR`` with box refinement (:data:`DN_NOTE`).
DN_NOT_CARRIED: Tuple[Rule, ...] = (
    (r'^label_enc\.',      None, 'NOT carried: denoising label embedding (92 ids x 255 + indicator); MMDetection DeformableDETR has no denoising queries'),
    (r'^tgt_embed\.',      None, 'NOT carried: DAB content queries (255-d + indicator); MMDetection query_embedding keeps its initialisation'),
    (r'^refpoint_embed\.', None, 'NOT carried: DAB learnable 4-d anchor boxes; MMDetection predicts 2-d reference points with reference_points_fc (initialised)'),
    (r'^patterns_embed\.', None, 'NOT carried: DAB pattern embeddings'),
    (r'^transformer\.decoder\.ref_point_head\.', None, 'NOT carried: DAB query-position MLP of the anchor sine embedding'),
    (r'^transformer\.decoder\.query_scale\.',    None, 'NOT carried: DAB query scale MLP'),
    (r'^transformer\.decoder\.high_dim_query_proj\.', None, 'NOT carried: DAB high-dimensional query update'),
)

#: DN-Deformable-DETR: every branch is a class classifier (no objectness).
DN_DEFORMABLE_DETR_RULES: Tuple[Rule, ...] = (DN_NOT_CARRIED + BACKBONE_RULES + _DEFORMABLE_TRANSFORMER
                                              + _deformable_head(DEFORMABLE_DETR_CLASSES))

#: DAB-Deformable-DETR (the model DN-Deformable-DETR adds denoising to,
#: told apart by DN's ``label_enc``) converts the same way: the DAB query
#: parts MMDetection has no module for.
DAB_DEFORMABLE_NOT_CARRIED: Tuple[Rule, ...] = (
    (r'^tgt_embed\.',      None, 'NOT carried: DAB content queries (num_queries x 256); MMDetection query_embedding keeps its initialisation'),
    (r'^refpoint_embed\.', None, 'NOT carried: DAB learnable 4-d anchor boxes; MMDetection predicts 2-d reference points with reference_points_fc (initialised)'),
    (r'^transformer\.decoder\.ref_point_head\.', None, 'NOT carried: DAB query-position MLP of the anchor sine embedding'),
    (r'^transformer\.decoder\.query_scale\.',    None, 'NOT carried: DAB query scale MLP'),
)

DAB_DEFORMABLE_DETR_RULES: Tuple[Rule, ...] = DAB_DEFORMABLE_NOT_CARRIED + DEFORMABLE_DETR_RULES

#: DAB-DETR: DETR encoder with a positional scale MLP, Conditional-DETR
#: style decoder attention, PReLU FFNs, 4-d anchor queries, one box MLP
#: shared by every decoder layer (registered twice: ``bbox_embed`` and
#: ``transformer.decoder.bbox_embed``).
DAB_DETR_RULES: Tuple[Rule, ...] = BACKBONE_RULES + DETR_ENCODER_RULES + (
    (_ENC + r'\.activation\.', r'encoder.layers.\1.ffn.layers.0.1.', 'encoder FFN PReLU (transformer_activation prelu)'),
    (r'^transformer\.encoder\.query_scale\.', 'encoder.query_scale.', 'encoder positional scale MLP'),
) + _CONDITIONAL_DECODER_ATTENTION + (
    (_DEC + r'\.activation\.', r'decoder.layers.\1.ffn.layers.0.1.', 'decoder FFN PReLU (transformer_activation prelu)'),
    (r'^transformer\.decoder\.query_scale\.',     'decoder.query_scale.',     'conditional query scale MLP (cond_elewise)'),
    (r'^transformer\.decoder\.ref_point_head\.',  'decoder.ref_point_head.',  'query-position MLP of the anchor sine embedding'),
    (r'^transformer\.decoder\.ref_anchor_head\.', 'decoder.ref_anchor_head.', 'width/height modulation MLP (modulate_hw_attn)'),
    (r'^(?:transformer\.decoder\.)?bbox_embed\.layers\.([0-2])\.', r'bbox_head.fc_reg.layers.\1.', 'box MLP shared by every decoder layer (transformer.decoder.bbox_embed is the same module)'),
    Rule(r'^class_embed\.', 'bbox_head.fc_cls.', 'classifier (rows remapped by remap_coco_classes)', ops=(DAB_DETR_CLASSES, ), unless='keep_classes'),
    (r'^refpoint_embed\.', 'query_embedding.',   'learnable 4-d anchor boxes (the queries)'),
    (r'^input_proj\.',     'neck.convs.0.conv.', 'input projection (1x1 conv with bias = ChannelMapper conv, no norm)'),
) + _DETR_DECODER_TAIL

def _multiscale_input_proj(backbone_levels: int) -> Tuple[Rule, ...]:
    """Rules for ``input_proj``: one 1x1 conv + GroupNorm per backbone level
    (``0..backbone_levels-1``), then the extra 3x3/2 level.

    Args:
        backbone_levels (int): Feature levels taken from the ResNet (3 for
            4-scale models, 4 for 5-scale ones: C2-C5, so ``input_proj.3``
            is a backbone level and ``input_proj.4`` the extra one).

    Returns:
        tuple[Rule]: Renames onto MMDetection's GN ``ChannelMapper``.
    """
    last = backbone_levels - 1
    return (
        (rf'^input_proj\.([0-{last}])\.0\.', r'neck.convs.\1.conv.', 'input projection conv (has a bias: the neck needs bias=True)'),
        (rf'^input_proj\.([0-{last}])\.1\.', r'neck.convs.\1.gn.',   'input projection GroupNorm'),
        (rf'^input_proj\.{backbone_levels}\.0\.', 'neck.extra_convs.0.conv.', 'extra level 3x3/2 conv (has a bias: the neck needs bias=True)'),
        (rf'^input_proj\.{backbone_levels}\.1\.', 'neck.extra_convs.0.gn.',   'extra level GroupNorm'),
    )


_P = OFFICIAL_DECODER_LAYERS
#: DINO: Deformable DETR layers, two-stage proposals scored by their own
#: (unshared) class/box heads (branch 6: :func:`proposal_branch`), content
#: queries, denoising label embedding. Its six decoder heads are *one*
#: Linear and *one* MLP (``dec_pred_*_embed_share``) registered as
#: ``class_embed.N``/``bbox_embed.N`` and
#: ``transformer.decoder.{class,bbox}_embed.N``: each branch 0..5 gets that
#: tensor (:func:`_deformable_branches`), the second names are aliases.
_DINO_QUERIES: Tuple[Rule, ...] = _TWO_STAGE_MEMORY + (
    (r'^transformer\.tgt_embed\.', 'query_embedding.', 'content queries (embed_init_tgt)'),
    Rule(r'^transformer\.enc_out_class_embed\.', f'bbox_head.cls_branches.{_P}.', 'two-stage proposal classifier (rows remapped by remap_coco_classes: both codes rank proposals by their best class)', ops=(DINO_CLASSES, ), unless='keep_classes'),
    (r'^transformer\.enc_out_bbox_embed\.layers\.0\.', f'bbox_head.reg_branches.{_P}.0.', 'two-stage proposal box MLP layer 0'),
    (r'^transformer\.enc_out_bbox_embed\.layers\.1\.', f'bbox_head.reg_branches.{_P}.2.', 'two-stage proposal box MLP layer 1'),
    (r'^transformer\.enc_out_bbox_embed\.layers\.2\.', f'bbox_head.reg_branches.{_P}.4.', 'two-stage proposal box MLP output layer'),
    (r'^transformer\.decoder\.norm\.',           'decoder.norm.',           'decoder norm (applied to every layer output)'),
    (r'^transformer\.decoder\.ref_point_head\.', 'decoder.ref_point_head.', 'query-position MLP of the anchor sine embedding'),
    Rule(r'^label_enc\.', 'dn_query_generator.label_embedding.', 'denoising label embedding (rows remapped by remap_label_embedding)', ops=(DINO_LABEL_EMBEDDING, ), unless='keep_classes'),
)

DINO_4SCALE_RULES: Tuple[Rule, ...] = (BACKBONE_RULES + _DEFORMABLE_LAYERS + _DINO_QUERIES
                                       + _deformable_branches(DINO_CLASSES) + _multiscale_input_proj(3))
DINO_5SCALE_RULES: Tuple[Rule, ...] = (BACKBONE_RULES + _DEFORMABLE_LAYERS + _DINO_QUERIES
                                       + _deformable_branches(DINO_CLASSES) + _multiscale_input_proj(4))
# fmt: on


# --- what the weights imply (no tensor changes) ------------------------------
def detr_variant(facts: Mapping[str, Any], keys: Iterable[str],
                 backbone: Optional[Iterable[str]] = None
                 ) -> Dict[str, Any]:
    """Model options the weights imply, and the config to build.

    Args:
        facts (Mapping): The format's ``facts``: ``variant`` (options every
            file of the format has), ``variant_from_keys`` (read
            ``with_box_refine``/``as_two_stage`` from the keys), ``config``
            (the config, or a ``str.format`` template of the options) and
            ``configs`` (configs by the values of the ``config_by``
            options), ``config_depths`` (backbone depths the config has;
            another is added to the name).
        keys (Iterable[str]): Source keys.
        backbone (Iterable[str], optional): The backbone's keys in
            torchvision names; default: the source's ``backbone.0.body.``
            keys (detrex files name their backbone as detectron2 does).

    Returns:
        dict: ``depth`` (ResNet), the options (``with_box_refine``,
        ``as_two_stage`` ...) and ``config`` (the matching config:
        mmconv's ``configs/detr_family/`` for Deformable DETR / DN / DINO,
        MMDetection's own otherwise).
    """
    keys = list(keys)
    if backbone is None:
        backbone = [k[len('backbone.0.body.'):] for k in keys
                    if k.startswith('backbone.0.body.')]
    depth = resnet_depth(backbone)
    out: Dict[str, Any] = {'depth': depth}
    out.update(facts.get('variant', {}))
    if facts.get('variant_from_keys'):
        out.update(with_box_refine=any(
            k.startswith('transformer.decoder.bbox_embed.') for k in keys),
            as_two_stage='transformer.enc_output.weight' in keys)
    by = tuple(out[name] for name in facts.get('config_by', ()))
    config = facts.get('configs', {}).get(by, facts['config']).format(**out)
    if 'config_depths' in facts and depth not in facts['config_depths']:
        config += f' (with backbone depth={depth})'
    out['config'] = config
    return out


def official_config(conv: Conversion) -> Tuple[str, Dict[str, Any]]:
    """The config an official (or detrex) file implies and its options
    (:func:`detr_variant`; the backbone depth read from the result)."""
    variant = detr_variant(conv.format.facts, conv.source,
                           [k[len('backbone.'):] for k in conv.state_dict
                            if k.startswith('backbone.')])
    return variant.pop('config'), variant


def record_variant(conv: Conversion, request: Request) -> None:
    """Family step: the model options and the config to build (into the
    summary, the meta and the hints); the detector of that config is
    compared with the result by :mod:`mmconv.verify`
    (:data:`DETR_DETECTOR`)."""
    record_config(conv, *official_config(conv))


def record_config(conv: Conversion, config: str,
                  variant: Dict[str, Any]) -> None:
    """The config to build and the options the weights imply: into the
    summary, the meta and the ``mim test`` hint."""
    conv.meta.update(mmdet_config=config, variant=variant)
    conv.lines.append(f'config:   {config}')
    path = config.split(' (')[0]
    if path.startswith('mmdet::'):  # mim finds mmdet's configs by file name
        path = path.rsplit('/', 1)[-1]
    conv.hints = lambda dst: (f'Evaluate it: mim test mmdet {path} '
                              f'--checkpoint {dst}')


def proposal_branch(conv: Conversion, request: Request) -> None:
    """Family step: the rule tables make the two-stage proposal heads branch
    :data:`OFFICIAL_DECODER_LAYERS`, which MMDetection reads as
    ``cls_branches[decoder.num_layers]``: a two-stage file must have that
    many decoder layers where the format's ``facts['proposal_branch']``
    says the branch is renamed to it (``'heads'``: DINO) or its rows are
    declared for it (``'rows'``: Deformable DETR, unless
    ``--keep-classes``).

    Raises:
        ConversionError: The file has another number of decoder layers.
    """
    facts = conv.format.facts
    kind = facts.get('proposal_branch')
    if kind is None or not conv.meta['variant'].get('as_two_stage') or (
            kind == 'rows' and request.keep_classes):
        return
    layers = {m.group(1) for m in (re.match(
        r'^transformer\.decoder\.layers\.(\d+)\.', k) for k in conv.source)
        if m}
    n = OFFICIAL_DECODER_LAYERS
    if len(layers) == n:
        return
    if kind == 'heads':
        raise ConversionError(
            f'{facts["model"]} checkpoint with {len(layers)} decoder layers: '
            f'mmconv converts the official {n}-layer models only (the '
            f'two-stage heads become branch {n}); use the official '
            f'dec_layers={n} model')
    raise ConversionError(
        f'{facts["model"]} checkpoint with {len(layers)} decoder layers: '
        f'mmconv converts the official {n}-layer models only (its proposal '
        f'classifier, branch {n}, keeps its rows by position); use the '
        f'official dec_layers={n} model, or --keep-classes')


def detr_notes(conv: Conversion, request: Request) -> None:
    """Family step: what the user must know about the result (a warning
    when it differs from its detector; the format's ``facts``:
    ``class_notes`` when classes were remapped, ``notes`` always,
    ``dropped_in_notes``: its notes name the tensors not carried)."""
    facts = conv.format.facts
    keys = conv.state_dict
    check = conv.report.backbone  # the detector (DETR_DETECTOR)
    if check is not None and check.what and not check.unchecked and (
            not check.complete):
        conv.lines.append(f'warning:  {check.describe()}')
    if any(re.match(r'^neck\.(?:extra_)?convs\.\d+\.conv\.bias$', k)
           for k in keys) and any('.gn.' in k for k in keys):
        conv.notes.append(
            "the official input_proj convs have a bias that MMDetection's "
            "GN ChannelMapper omits by default (bias='auto'): build the neck "
            'with bias=True (configs/detr_family/*_official_coco.py do) or '
            'these tensors are unexpected keys')
    if conv.changed:
        conv.notes.extend(facts.get('class_notes', ()))
    conv.notes.extend(facts.get('notes', ()))
    dropped = [r for r in conv.report.dropped if 'NOT carried' in r.reason]
    if dropped and not facts.get('dropped_in_notes'):
        conv.notes.append(f'{len(dropped)} tensors NOT carried (see dropped)')


# --- format facts ------------------------------------------------------------
# SourceFormat.facts: the options, config and notes each format implies,
# read by the family steps above (they change no tensor).
_UNUSED_IDS = sorted(set(range(COCO_NUM_IDS)) - set(COCO_CATEGORY_IDS))
DETR_SOFTMAX_NOTE = (
    'DETRHead applies its softmax to the 80 classes + no-object only: '
    f'the rows of the {len(_UNUSED_IDS)} COCO ids no category uses '
    f'({", ".join(map(str, _UNUSED_IDS))}) are dropped from the classifier, '
    'so the scores equal the official ones renormalised over the kept '
    'columns (identical when those ids get no probability; official '
    'training never targets them); logits and boxes are unchanged')
DINO_PROPOSAL_NOTE = (
    'DINO ranks its two-stage proposals by the best class score: '
    'MMDetection over the 80 classes, the official code over the 91 '
    'COCO ids, so both pick the same proposals unless one of the 11 '
    'ids no category uses (never a training target) outscores every '
    'class; decoder logits and boxes are the official ones')
DN_NOTE = (
    'DN-Deformable-DETR has no exact MMDetection equivalent: backbone, '
    'neck, level embedding, encoder, decoder layers and class/box '
    'branches are converted into DeformableDETR (box refinement, '
    'feedforward_channels=2048); the DAB/DN query parts are NOT '
    'carried (see dropped); MMDetection query_embedding and '
    'reference_points_fc stay initialised: fine-tune before use')
DAB_DEFORMABLE_NOTE = (
    'DAB-Deformable-DETR has no exact MMDetection equivalent: '
    'backbone, neck, level embedding, encoder, decoder layers and '
    'class/box branches are converted into DeformableDETR (box '
    'refinement, feedforward_channels=2048); the DAB query parts '
    '(tgt_embed, refpoint_embed, decoder ref_point_head and '
    'query_scale) are NOT carried (see dropped); MMDetection '
    'query_embedding and reference_points_fc stay initialised: '
    'fine-tune before use')

_FAMILY_CONFIGS = 'configs/detr_family/'
_REFINE_TWO_STAGE = ('with_box_refine', 'as_two_stage')


def _dino_facts(levels: int) -> Dict[str, Any]:
    """What a DINO ``levels``-scale file implies."""
    return dict(
        variant=dict(with_box_refine=True, as_two_stage=True,
                     num_feature_levels=levels),
        config=f'{_FAMILY_CONFIGS}dino-{levels}scale_r50_official_coco.py',
        config_depths=(50, None), proposal_branch='heads', model='DINO',
        class_notes=(DINO_PROPOSAL_NOTE, ), queries=900)


_TOP = ('model', )
#: DN-/DAB-Deformable-DETR files have no MMDetection query parts: the
#: detector's ``query_embedding`` and ``reference_points_fc`` keep their
#: initialisation (``facts['initialised']``, :func:`detector_config`).
_DAB_QUERIES = (r'^query_embedding\.weight$', r'^reference_points_fc\.')


# --- the detector the result is loaded into ----------------------------------
_D = 'mmdet::deformable_detr/deformable-detr'
_NECK_BIAS = (('neck.bias', True), )
_FFN_2048 = _NECK_BIAS + tuple(
    (f'{part}.layer_cfg.ffn_cfg.feedforward_channels', 2048)
    for part in ('encoder', 'decoder'))
#: mmconv's ``configs/detr_family/`` configs, as the MMDetection config
#: each one is and the model options it sets (tests check the files build
#: the same model): verification needs MMDetection only, not these files.
FAMILY_CONFIG_MODELS: Dict[str, Tuple[str, Tuple[Tuple[str, Any], ...]]] = {
    f'{_FAMILY_CONFIGS}deformable-detr_r50_official_coco.py':
        (f'{_D}_r50_16xb2-50e_coco.py', _NECK_BIAS),
    f'{_FAMILY_CONFIGS}deformable-detr-refine_r50_official_coco.py':
        (f'{_D}-refine_r50_16xb2-50e_coco.py', _NECK_BIAS),
    f'{_FAMILY_CONFIGS}deformable-detr-refine-twostage_r50_official_coco.py':
        (f'{_D}-refine-twostage_r50_16xb2-50e_coco.py', _NECK_BIAS),
    f'{_FAMILY_CONFIGS}dn-deformable-detr-refine_r50_official_coco.py':
        (f'{_D}-refine_r50_16xb2-50e_coco.py', _FFN_2048),
    f'{_FAMILY_CONFIGS}dab-deformable-detr-refine_r50_official_coco.py':
        (f'{_D}-refine_r50_16xb2-50e_coco.py', _FFN_2048),
    f'{_FAMILY_CONFIGS}dino-4scale_r50_official_coco.py':
        ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', _NECK_BIAS),
    f'{_FAMILY_CONFIGS}dino-5scale_r50_official_coco.py':
        ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', (
            ('num_feature_levels', 5), ('backbone.out_indices', (0, 1, 2, 3)),
            ('neck.in_channels', [256, 512, 1024, 2048]),
            ('neck.num_outs', 5), ('neck.bias', True),
            ('encoder.layer_cfg.self_attn_cfg.num_levels', 5),
            ('decoder.layer_cfg.cross_attn_cfg.num_levels', 5))),
}
#: MMDetection's model of each config folder.
_DETECTORS = {'detr': 'DETR', 'conditional_detr': 'ConditionalDETR',
              'dab_detr': 'DABDETR', 'deformable_detr': 'DeformableDETR',
              'dino': 'DINO'}
#: Variant entries -> the detector's options (transformers: ``two_stage``).
_VARIANT_OPTIONS = (('with_box_refine', 'with_box_refine'),
                    ('as_two_stage', 'as_two_stage'),
                    ('two_stage', 'as_two_stage'))
_LAYER = re.compile(r'^(encoder|decoder)\.layers\.(\d+)\.')


def detector_config(conv: Conversion, config: str,
                    variant: Mapping[str, Any]) -> Optional[ModelConfig]:
    """The MMDetection detector a result is loaded into: the model of
    ``config`` (the one the conversion records; one of mmconv's
    ``configs/detr_family/`` is :data:`FAMILY_CONFIG_MODELS`; otherwise
    the format's ``facts['module_config']``) with the options the weights
    imply: backbone depth, box refinement and two-stage (``variant``),
    encoder and decoder layers, queries, and the classes (80, or the
    classifier's rows with ``--keep-classes``). The format's
    ``facts['initialised']`` are the detector keys its files never have.
    None: no MMDetection config is known for it.
    """
    facts = conv.format.facts
    path = config.split(' (')[0]
    base, options = (path, ()) if path.startswith('mmdet::') else (
        FAMILY_CONFIG_MODELS.get(path) or FAMILY_CONFIG_MODELS.get(
            facts.get('module_config'), (None, ())))
    if base is None:
        return None
    sd = conv.state_dict
    implied: Dict[str, Any] = {}
    if variant.get('depth') is not None:
        implied['backbone.depth'] = variant['depth']
    for name, option in _VARIANT_OPTIONS:
        if name in variant:
            implied[option] = variant[name]
    layers: Dict[str, int] = {}
    for m in filter(None, map(_LAYER.match, sd)):
        layers[m.group(1)] = max(layers.get(m.group(1), 0),
                                 int(m.group(2)) + 1)
    implied.update({f'{part}.num_layers': n for part, n in layers.items()})
    queries = sd.get('query_embedding.weight')
    if queries is not None:
        implied['num_queries'] = queries.shape[0]
    classifier = sd.get('bbox_head.fc_cls.weight',
                        sd.get('bbox_head.cls_branches.0.weight'))
    implied['bbox_head.num_classes'] = len(COCO_CATEGORY_IDS) if (
        classifier is None or not conv.request.keep_classes) else (
        classifier.shape[0] - int(bool(facts.get('no_object'))))
    usual = {'backbone.depth': 50, 'encoder.num_layers': _O,
             'decoder.num_layers': _O, 'num_queries': facts.get('queries'),
             'bbox_head.num_classes': len(COCO_CATEGORY_IDS)}
    shown = [f'{k}={v}' for k, v in implied.items()
             if k in usual and v != usual[k] and f'{k}=' not in config
             and not (k == 'backbone.depth' and (
                 f'_r{v}_' in base or f'depth={v}' in config))]
    detector = _DETECTORS.get(base.split('::', 1)[1].split('/', 1)[0],
                              'MMDetection')
    title = f'{detector} detector of {config}'
    if shown:
        title += f' with {", ".join(shown)}'
    return ModelConfig(base, options + tuple(implied.items()), title,
                       facts.get('initialised', ()))


def _module(config: Callable[[Conversion], Tuple[str, Dict[str, Any]]]
            ) -> TargetModule:
    """The detector of the config ``config(conv)`` names (MMDetection's
    registry builds it): differences are reported in ``backbone:``, not
    refused (``--keep-classes`` may keep rows no MMDetection head has)."""
    return TargetModule(
        'mmdet.registry:MODELS', None, None, strict=False,
        unknown='detector not verified: no MMDetection config known for it',
        config=lambda conv: detector_config(conv, *config(conv)))


#: The whole detector: the model of the config the conversion records,
#: compared with the result by names and shapes (:mod:`mmconv.verify`).
DETR_DETECTOR = _module(official_config)

DETR_FAMILY = Family('detr', 'DETR-family detector',
                     options=('keep_classes', ),
                     finish=(record_variant, proposal_branch, detr_notes),
                     targets=('mmdet', ), module=DETR_DETECTOR)

# fmt: off
DETR_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'dn_deformable_detr', 'detr', 'DN-Deformable-DETR (DN-DAB-Deformable-DETR)',
        rules=DN_DEFORMABLE_DETR_RULES, strict=True,
        sentinels=(r'^label_enc\.weight$',
                   r'^refpoint_embed\.weight$', r'^transformer\.level_embed$',
                   r'^transformer\.encoder\.layers\.0\.self_attn\.sampling_offsets\.weight$'),
        containers=_TOP,
        source='IDEA-Research/DN-DETR: main.py -m dn_dab_deformable_detr saves '
        '{model, optimizer, lr_scheduler, epoch, args}',
        facts=dict(variant_from_keys=True,
                   config=f'{_FAMILY_CONFIGS}dn-deformable-detr-refine_r50_official_coco.py',
                   config_depths=(50, None), notes=(DN_NOTE, ), dropped_in_notes=True,
                   initialised=_DAB_QUERIES)),
    SourceFormat(
        'deformable_detr', 'detr', 'Deformable DETR',
        rules=DEFORMABLE_DETR_RULES, strict=True,
        sentinels=(r'^transformer\.level_embed$',
                   r'^transformer\.encoder\.layers\.0\.self_attn\.sampling_offsets\.weight$'),
        containers=_TOP,
        released=('r50_deformable_detr-checkpoint.pth',
                  'r50_deformable_detr_plus_iterative_bbox_refinement-checkpoint.pth',
                  'r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage-checkpoint.pth'),
        source='fundamentalvision/Deformable-DETR: main.py saves {model, optimizer, '
        'lr_scheduler, epoch, args}',
        facts=dict(variant_from_keys=True, config_by=_REFINE_TWO_STAGE,
                   configs={(False, False): f'{_FAMILY_CONFIGS}deformable-detr_r50_official_coco.py',
                            (True, False): f'{_FAMILY_CONFIGS}deformable-detr-refine_r50_official_coco.py',
                            (True, True): f'{_FAMILY_CONFIGS}deformable-detr-refine-twostage_r50_official_coco.py'},
                   config='an MMDetection DeformableDETR with with_box_refine={with_box_refine}, '
                   'as_two_stage={as_two_stage}, neck bias=True',
                   config_depths=(50, None), proposal_branch='rows',
                   model='two-stage Deformable DETR', queries=300,
                   module_config=f'{_FAMILY_CONFIGS}deformable-detr_r50_official_coco.py')),
    SourceFormat(
        'conditional_detr', 'detr', 'Conditional DETR',
        rules=CONDITIONAL_DETR_RULES, strict=True,
        sentinels=(r'^transformer\.decoder\.layers\.0\.ca_qpos_sine_proj\.weight$',
                   r'^class_embed\.weight$'),
        containers=_TOP,
        released=('ConditionalDETR_r50_epoch50.pth', 'ConditionalDETR_r101_epoch50.pth'),
        source='Atten4Vis/ConditionalDETR: main.py saves {model, optimizer, '
        'lr_scheduler, epoch, args}',
        facts=dict(config='mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
                   config_depths=(50, ), queries=300)),
    SourceFormat(
        'detr', 'detr', 'DETR',
        rules=DETR_RULES, strict=True,
        sentinels=(r'^transformer\.decoder\.layers\.0\.multihead_attn\.in_proj_weight$',
                   r'^class_embed\.weight$', r'^input_proj\.weight$'),
        containers=_TOP,
        released=('detr-r50-e632da11.pth', 'detr-r101-2c7b67e5.pth'),
        source='facebookresearch/detr: main.py saves {model, optimizer, '
        'lr_scheduler, epoch, args}; released files {model}',
        facts=dict(config_by=('depth', ),
                   configs={(101, ): 'mmdet::detr/detr_r101_8xb2-500e_coco.py'},
                   config='mmdet::detr/detr_r50_8xb2-150e_coco.py',
                   class_notes=(DETR_SOFTMAX_NOTE, ), queries=100, no_object=True)),
    SourceFormat(
        'dino_5scale', 'detr', 'DINO 5-scale (IDEA-Research)',
        rules=DINO_5SCALE_RULES, strict=True,
        sentinels=(r'^label_enc\.weight$', r'^transformer\.tgt_embed\.weight$',
                   r'^transformer\.enc_out_class_embed\.weight$',
                   r'^transformer\.level_embed$', r'^input_proj\.4\.0\.weight$'),
        containers=_TOP,
        source='IDEA-Research/DINO: main.py -c config/DINO/DINO_5scale.py saves '
        '{model, optimizer, lr_scheduler, epoch, args}',
        facts=_dino_facts(5)),
    SourceFormat(
        'dino_4scale', 'detr', 'DINO 4-scale (IDEA-Research)',
        rules=DINO_4SCALE_RULES, strict=True,
        sentinels=(r'^label_enc\.weight$', r'^transformer\.tgt_embed\.weight$',
                   r'^transformer\.enc_out_class_embed\.weight$',
                   r'^transformer\.level_embed$'),
        containers=_TOP,
        released=('checkpoint0011_4scale.pth', ),
        source='IDEA-Research/DINO: main.py -c config/DINO/DINO_4scale.py saves '
        '{model, optimizer, lr_scheduler, epoch, args}',
        facts=_dino_facts(4)),
    SourceFormat(
        'dab_deformable_detr', 'detr', 'DAB-Deformable-DETR',
        rules=DAB_DEFORMABLE_DETR_RULES, strict=True,
        sentinels=(r'^refpoint_embed\.weight$', r'^transformer\.level_embed$',
                   r'^transformer\.encoder\.layers\.0\.self_attn\.sampling_offsets\.weight$'),
        containers=_TOP,
        source='IDEA-Research/DAB-DETR: main.py -m dab_deformable_detr saves '
        '{model, optimizer, lr_scheduler, epoch, args}',
        facts=dict(variant_from_keys=True, config_by=_REFINE_TWO_STAGE,
                   configs={(True, False): f'{_FAMILY_CONFIGS}dab-deformable-detr-refine_r50_official_coco.py'},
                   config=f'{_FAMILY_CONFIGS}dab-deformable-detr-refine_r50_official_coco.py'
                   ' (with with_box_refine={with_box_refine}, as_two_stage={as_two_stage})',
                   config_depths=(50, None), proposal_branch='rows',
                   model='two-stage DAB-Deformable-DETR',
                   notes=(DAB_DEFORMABLE_NOTE, ), dropped_in_notes=True,
                   initialised=_DAB_QUERIES)),
    SourceFormat(
        'dab_detr', 'detr', 'DAB-DETR',
        rules=DAB_DETR_RULES, strict=True,
        sentinels=(r'^refpoint_embed\.weight$',
                   r'^transformer\.encoder\.query_scale\.layers\.0\.weight$',
                   r'^transformer\.decoder\.layers\.0\.ca_qpos_sine_proj\.weight$'),
        containers=_TOP,
        source='IDEA-Research/DAB-DETR: main.py -m dab_detr saves {model, '
        'optimizer, lr_scheduler, epoch, args}',
        facts=dict(config='mmdet::dab_detr/dab-detr_r50_8xb2-50e_coco.py',
                   config_depths=(50, ), queries=300)),
)
# fmt: on

register(DETR_FAMILY, *DETR_FORMATS)


# --- Hugging Face transformers layouts (issue 21) ----------------------------
# ``save_pretrained`` folders / lone ``model.safetensors`` or
# ``pytorch_model.bin`` of transformers' DETR-family classes, as the 5.x and
# the last 4.x writers save them (recorded: tests/fixtures/hf_detr_layouts.py;
# transformers' convert_*_to_pytorch.py scripts map the official names to
# these one to one, splitting every packed ``in_proj`` into
# ``q_proj``/``k_proj``/``v_proj`` rows 0:256, 256:512, 512:768):
#
# ==============================  ==========================  ===============
# format                          transformers class          MMDetection
# ==============================  ==========================  ===============
# ``hf_detr``                     ``DetrFor...``              ``DETR``
# ``hf_deformable_detr``          ``DeformableDetrFor...``    DeformableDETR
# ``hf_deformable_detr_refine``   ``with_box_refine`` (5.x)   box refinement
# ``hf_deformable_detr_refine_v4``  ``with_box_refine`` (4.x  box refinement
#                                 ``pytorch_model.bin``)
# ``hf_deformable_detr_twostage``  ``with_box_refine,         refinement,
#                                 two_stage`` (4.x, 5.x)      two-stage
# ``hf_conditional_detr``         ``ConditionalDetrFor...``   ConditionalDETR
# ``hf_dab_detr``                 ``DabDetrFor...``           ``DABDETR``
# ``hf_rt_detr``                  ``RTDetr[V2]For...``        not supported
# ==============================  ==========================  ===============
#
# * The backbone is a timm ResNet under ``model.backbone.conv_encoder.model.``
#   (DAB-DETR: ``...model._backbone.``) with transformers' frozen BN (weight,
#   bias, running statistics, no ``num_batches_tracked``): the same names as
#   MMDetection's ``ResNet``, renamed to ``backbone.``.
# * Separate ``q_proj``/``k_proj``/``v_proj`` linears of every
#   ``nn.MultiheadAttention``-style attention are merged (rule ``parts``)
#   into MMDetection's packed ``attn.in_proj_weight``/``in_proj_bias``, q,
#   k, v rows in that order (``Concatenate``).
# * Heads saved once, used by every decoder layer: transformers ties the
#   per-layer heads (``_tied_weights_keys``) and writes only branch 0:
#   Deformable DETR's classifier and box MLP without box refinement (both
#   writers), and its classifier with box refinement (5.x: one classifier
#   for every layer; the 4.x writer saved the six). MMDetection holds one
#   branch per layer: the rule's replacement tuple fills all
#   :data:`OFFICIAL_DECODER_LAYERS` of them with that tensor (a file with
#   another decoder depth is refused: :func:`hf_branches`).
# * The 4.x writer refuses safetensors for box-refine / two-stage models
#   (shared tensors) and writes ``pytorch_model.bin``, where the heads are
#   registered twice (``bbox_embed.N`` = ``model.decoder.bbox_embed.N``,
#   two-stage also ``class_embed.N`` = ``model.decoder.class_embed.N``):
#   aliases, merged by the engine. 5.x writes the ``model.decoder.`` names
#   only.
# * DAB-DETR has one box MLP: ``bbox_predictor`` (5.x) =
#   ``model.decoder.bbox_embed`` (4.x); MMDetection's ``DABDETR`` holds it
#   once too (``bbox_head.fc_reg``, handed to the decoder for its anchor
#   updates), so it fills the one place both codes use it.
# * Classes: the same ops as the official formats (the checkpoints on the
#   Hub classify the 91 COCO ids; DETR adds no-object last); the two-stage
#   proposal classifier (branch 6) keeps rows 0..79 by position (row 0 is
#   the objectness transformers ranks proposals by, as in the official
#   code).
# * ``config.json`` (a ``save_pretrained`` folder) only confirms: a model
#   type, ``with_box_refine``, ``two_stage`` or ``decoder_layers`` other
#   than the weights say is refused (:func:`hf_variant`).
_HF_ENC = r'^model\.encoder\.layers\.' + _L
_HF_DEC = r'^model\.decoder\.layers\.' + _L
_QKV = ('q', 'k', 'v')


def _hf_qkv(prefix: str, out: str, what: str) -> Rule:
    """``{prefix}.{q,k,v}_proj.{weight,bias}`` -> packed
    ``{out}.in_proj_{weight,bias}`` (``prefix`` has one group, the
    layer)."""
    return Rule(prefix + r'\.(?P<part>[qkv])_proj\.(weight|bias)$',
                out + r'.in_proj_\3',
                f'{what} q_proj, k_proj, v_proj fused into the packed '
                'in_proj (rows q, k, v)', ops=(Concatenate(0), ),
                parts=_QKV)


# fmt: off
HF_BACKBONE_RULES: Tuple[Rule, ...] = (
    (r'^model\.backbone\.conv_encoder\.model\.(?:_backbone\.)?', 'backbone.', 'timm ResNet (conv_encoder.model -> MMDetection ResNet; frozen BN -> frozen BN)'),
    (r'^model\.backbone\.position_embedding\.', None, 'learned position embedding (position_embedding_type learned): MMDetection uses sine encodings, NOT carried'),
)

#: FFN and norms of a transformers encoder layer (post-norm).
_HF_ENCODER_TAIL: Tuple[Rule, ...] = (
    (_HF_ENC + r'\.self_attn_layer_norm\.', r'encoder.layers.\1.norms.0.',        'encoder norm after attention'),
    (_HF_ENC + r'\.fc1\.',                  r'encoder.layers.\1.ffn.layers.0.0.', 'encoder FFN fc1'),
    (_HF_ENC + r'\.fc2\.',                  r'encoder.layers.\1.ffn.layers.1.',   'encoder FFN fc2'),
    (_HF_ENC + r'\.final_layer_norm\.',     r'encoder.layers.\1.norms.1.',        'encoder norm after FFN'),
)

HF_DETR_ENCODER_RULES: Tuple[Rule, ...] = (
    _hf_qkv(_HF_ENC + r'\.self_attn', r'encoder.layers.\1.self_attn.attn', 'encoder self-attention'),
    (_HF_ENC + r'\.self_attn\.out_proj\.', r'encoder.layers.\1.self_attn.attn.out_proj.', 'encoder self-attention output projection'),
) + _HF_ENCODER_TAIL

#: Norms and FFN of a transformers decoder layer: self-attention ->
#: self_attn_layer_norm -> cross-attention (``encoder_attn``) ->
#: encoder_attn_layer_norm -> fc1, fc2 -> final_layer_norm.
_HF_DECODER_TAIL: Tuple[Rule, ...] = (
    (_HF_DEC + r'\.self_attn_layer_norm\.',    r'decoder.layers.\1.norms.0.',        'decoder norm after self-attention'),
    (_HF_DEC + r'\.encoder_attn_layer_norm\.', r'decoder.layers.\1.norms.1.',        'decoder norm after cross-attention'),
    (_HF_DEC + r'\.final_layer_norm\.',        r'decoder.layers.\1.norms.2.',        'decoder norm after FFN'),
    (_HF_DEC + r'\.fc1\.',                     r'decoder.layers.\1.ffn.layers.0.0.', 'decoder FFN fc1'),
    (_HF_DEC + r'\.fc2\.',                     r'decoder.layers.\1.ffn.layers.1.',   'decoder FFN fc2'),
    (r'^model\.decoder\.layernorm\.',          'decoder.post_norm.',                 'decoder final norm'),
)


def _hf_detr_head(classes: SelectRows) -> Tuple[Rule, ...]:
    """DETR / Conditional DETR head: ``class_labels_classifier`` (its rows:
    ``classes``), the 3-layer ``bbox_predictor`` MLP, queries and the 1x1
    input projection."""
    return (
        Rule(r'^class_labels_classifier\.', 'bbox_head.fc_cls.', 'classifier (rows remapped by remap_coco_classes)', ops=(classes, ), unless='keep_classes'),
        (r'^bbox_predictor\.layers\.0\.', 'bbox_head.reg_ffn.layers.0.0.', 'box MLP layer 0'),
        (r'^bbox_predictor\.layers\.1\.', 'bbox_head.reg_ffn.layers.1.',   'box MLP layer 1'),
        (r'^bbox_predictor\.layers\.2\.', 'bbox_head.fc_reg.',             'box MLP output layer'),
        (r'^model\.query_position_embeddings\.', 'query_embedding.',       'object queries'),
        (r'^model\.input_projection\.',   'neck.convs.0.conv.',            'input projection (1x1 conv with bias = ChannelMapper conv, no norm)'),
    )


HF_DETR_RULES: Tuple[Rule, ...] = HF_BACKBONE_RULES + HF_DETR_ENCODER_RULES + (
    _hf_qkv(_HF_DEC + r'\.self_attn', r'decoder.layers.\1.self_attn.attn', 'decoder self-attention'),
    (_HF_DEC + r'\.self_attn\.out_proj\.', r'decoder.layers.\1.self_attn.attn.out_proj.', 'decoder self-attention output projection'),
    _hf_qkv(_HF_DEC + r'\.encoder_attn', r'decoder.layers.\1.cross_attn.attn', 'decoder cross-attention'),
    (_HF_DEC + r'\.encoder_attn\.out_proj\.', r'decoder.layers.\1.cross_attn.attn.out_proj.', 'decoder cross-attention output projection'),
) + _HF_DECODER_TAIL + _hf_detr_head(DETR_CLASSES)

HF_CONDITIONAL_DETR_RULES: Tuple[Rule, ...] = HF_BACKBONE_RULES + HF_DETR_ENCODER_RULES + tuple(
    (_HF_DEC + rf'\.sa_{p}_proj\.', rf'decoder.layers.\1.self_attn.{p}_proj.', f'conditional self-attention {p} projection')
    for p in ('qcontent', 'qpos', 'kcontent', 'kpos', 'v')
) + (
    (_HF_DEC + r'\.self_attn\.out_proj\.', r'decoder.layers.\1.self_attn.out_proj.', 'conditional self-attention output projection'),
) + tuple(
    (_HF_DEC + rf'\.ca_{p}_proj\.', rf'decoder.layers.\1.cross_attn.{p}_proj.', f'conditional cross-attention {p} projection')
    for p in ('qcontent', 'qpos', 'kcontent', 'kpos', 'v', 'qpos_sine')
) + (
    (_HF_DEC + r'\.encoder_attn\.out_proj\.', r'decoder.layers.\1.cross_attn.out_proj.', 'conditional cross-attention output projection'),
    (r'^model\.decoder\.query_scale\.',    'decoder.query_scale.',    'conditional spatial query scale MLP'),
    (r'^model\.decoder\.ref_point_head\.', 'decoder.ref_point_head.', 'reference point MLP'),
) + _HF_DECODER_TAIL + _hf_detr_head(CONDITIONAL_DETR_CLASSES)

#: Deformable DETR layers, input projections, queries, two-stage parts.
_HF_DEFORMABLE: Tuple[Rule, ...] = HF_BACKBONE_RULES + (
    (r'^model\.level_embed$', 'level_embed', 'level embedding'),
    (_HF_ENC + r'\.self_attn\.', r'encoder.layers.\1.self_attn.', 'encoder deformable attention'),
) + _HF_ENCODER_TAIL + (
    _hf_qkv(_HF_DEC + r'\.self_attn', r'decoder.layers.\1.self_attn.attn', 'decoder self-attention'),
    (_HF_DEC + r'\.self_attn\.out_proj\.', r'decoder.layers.\1.self_attn.attn.out_proj.', 'decoder self-attention output projection'),
    (_HF_DEC + r'\.encoder_attn\.', r'decoder.layers.\1.cross_attn.', 'decoder deformable cross-attention'),
) + _HF_DECODER_TAIL + (
    (r'^model\.reference_points\.',  'reference_points_fc.', 'reference points from query positions'),
    (r'^model\.enc_output\.',        'memory_trans_fc.',     'two-stage memory transform'),
    (r'^model\.enc_output_norm\.',   'memory_trans_norm.',   'two-stage memory norm'),
    (r'^model\.pos_trans\.',         'pos_trans_fc.',        'two-stage proposal position transform'),
    (r'^model\.pos_trans_norm\.',    'pos_trans_norm.',      'two-stage proposal position norm'),
    (r'^model\.query_position_embeddings\.', 'query_embedding.', 'object queries (position half, then content half)'),
    (r'^model\.input_proj\.([0-2])\.0\.', r'neck.convs.\1.conv.', 'input projection conv (has a bias: the neck needs bias=True)'),
    (r'^model\.input_proj\.([0-2])\.1\.', r'neck.convs.\1.gn.',   'input projection GroupNorm'),
    (r'^model\.input_proj\.3\.0\.', 'neck.extra_convs.0.conv.',   'extra level 3x3/2 conv (has a bias: the neck needs bias=True)'),
    (r'^model\.input_proj\.3\.1\.', 'neck.extra_convs.0.gn.',     'extra level GroupNorm'),
)

_O6 = tuple(range(OFFICIAL_DECODER_LAYERS))
#: The one classifier transformers saves for every decoder layer
#: (``class_embed.0``) -> every MMDetection branch.
_HF_SHARED_CLASSIFIER = Rule(
    r'^class_embed\.0\.', tuple(f'bbox_head.cls_branches.{i}.' for i in _O6),
    f'classifier of every decoder layer (saved once: class_embed.1..{_O6[-1]} are tied to it), '
    'into each MMDetection branch (rows remapped by remap_coco_classes)',
    ops=(DEFORMABLE_DETR_CLASSES, ), unless='keep_classes')
#: The one box MLP transformers saves for every decoder layer
#: (``bbox_embed.0``, no box refinement) -> every MMDetection branch.
_HF_SHARED_BOX_MLP: Tuple[Rule, ...] = tuple(
    Rule(rf'^bbox_embed\.0\.layers\.{j}\.', tuple(f'bbox_head.reg_branches.{i}.{2 * j}.' for i in _O6),
         f'box MLP layer {j} of every decoder layer (saved once: bbox_embed.1..{_O6[-1]} are tied to it), into each MMDetection branch')
    for j in range(3))
#: Box MLPs per decoder layer (box refinement): ``model.decoder.bbox_embed.N``
#: (4.x also ``bbox_embed.N``, the same tensors).
_HF_BOX_MLPS: Tuple[Rule, ...] = tuple(
    (rf'^(?:model\.decoder\.)?bbox_embed\.(\d+)\.layers\.{j}\.', rf'bbox_head.reg_branches.\1.{2 * j}.', f'box MLP layer {j} of decoder layer N (model.decoder.bbox_embed.N and bbox_embed.N are one module)')
    for j in range(3))
#: Classifiers per decoder layer (4.x box refinement; two-stage).
_HF_CLASSIFIERS = Rule(
    r'^(?:model\.decoder\.)?class_embed\.(\d+)\.', r'bbox_head.cls_branches.\1.',
    'classifier of decoder layer N (model.decoder.class_embed.N and class_embed.N are one module; rows remapped by remap_coco_classes)',
    ops=(DEFORMABLE_DETR_CLASSES, ), unless='keep_classes')
#: Two-stage: branch 6 is the proposal classifier (rows kept by position).
_HF_PROPOSAL_CLASSIFIER = Rule(
    rf'^(?:model\.decoder\.)?class_embed\.{_O}\.', rf'bbox_head.cls_branches.{_O}.',
    f'two-stage proposal classifier (branch {_O}; rows kept by position: row 0 is the objectness proposals are ranked by)',
    ops=(PROPOSAL_OBJECTNESS, ), unless='keep_classes')

HF_DEFORMABLE_DETR_RULES: Tuple[Rule, ...] = _HF_DEFORMABLE + (_HF_SHARED_CLASSIFIER, ) + _HF_SHARED_BOX_MLP
HF_DEFORMABLE_DETR_REFINE_RULES: Tuple[Rule, ...] = _HF_DEFORMABLE + (_HF_SHARED_CLASSIFIER, ) + _HF_BOX_MLPS
HF_DEFORMABLE_DETR_REFINE_V4_RULES: Tuple[Rule, ...] = _HF_DEFORMABLE + (_HF_CLASSIFIERS, ) + _HF_BOX_MLPS
HF_DEFORMABLE_DETR_TWO_STAGE_RULES: Tuple[Rule, ...] = _HF_DEFORMABLE + (_HF_PROPOSAL_CLASSIFIER, _HF_CLASSIFIERS) + _HF_BOX_MLPS

#: DAB-DETR: names of the sub-layers of a transformers decoder layer.
_HF_DAB_DECODER: Tuple[Rule, ...] = tuple(
    (_HF_DEC + rf'\.self_attn\.self_attn_{hf}_proj\.', rf'decoder.layers.\1.self_attn.{mm}_proj.', f'conditional self-attention {mm} projection')
    for hf, mm in (('query_content', 'qcontent'), ('query_pos', 'qpos'), ('key_content', 'kcontent'), ('key_pos', 'kpos'), ('value', 'v'))
) + tuple(
    (_HF_DEC + rf'\.cross_attn\.cross_attn_{hf}_proj\.', rf'decoder.layers.\1.cross_attn.{mm}_proj.', f'conditional cross-attention {mm} projection')
    for hf, mm in (('query_content', 'qcontent'), ('query_pos', 'qpos'), ('key_content', 'kcontent'), ('key_pos', 'kpos'), ('value', 'v'), ('query_pos_sine', 'qpos_sine'))
) + (
    (_HF_DEC + r'\.self_attn\.self_attn\.output_proj\.',      r'decoder.layers.\1.self_attn.out_proj.',    'conditional self-attention output projection'),
    (_HF_DEC + r'\.self_attn\.self_attn_layer_norm\.',        r'decoder.layers.\1.norms.0.',               'decoder norm after self-attention'),
    (_HF_DEC + r'\.cross_attn\.cross_attn\.output_proj\.',    r'decoder.layers.\1.cross_attn.out_proj.',   'conditional cross-attention output projection'),
    (_HF_DEC + r'\.cross_attn\.cross_attn_layer_norm\.',      r'decoder.layers.\1.norms.1.',               'decoder norm after cross-attention'),
    (_HF_DEC + r'\.mlp\.fc1\.',                               r'decoder.layers.\1.ffn.layers.0.0.',        'decoder FFN fc1'),
    (_HF_DEC + r'\.mlp\.activation_fn\.',                     r'decoder.layers.\1.ffn.layers.0.1.',        'decoder FFN PReLU'),
    (_HF_DEC + r'\.mlp\.fc2\.',                               r'decoder.layers.\1.ffn.layers.1.',          'decoder FFN fc2'),
    (_HF_DEC + r'\.mlp\.final_layer_norm\.',                  r'decoder.layers.\1.norms.2.',               'decoder norm after FFN'),
    (r'^model\.decoder\.layernorm\.',       'decoder.post_norm.',       'decoder final norm'),
    (r'^model\.decoder\.query_scale\.',     'decoder.query_scale.',     'conditional query scale MLP'),
    (r'^model\.decoder\.ref_point_head\.',  'decoder.ref_point_head.',  'query-position MLP of the anchor sine embedding'),
    (r'^model\.decoder\.ref_anchor_head\.', 'decoder.ref_anchor_head.', 'width/height modulation MLP'),
)

HF_DAB_DETR_RULES: Tuple[Rule, ...] = HF_BACKBONE_RULES + HF_DETR_ENCODER_RULES + (
    (_HF_ENC + r'\.activation_fn\.',      r'encoder.layers.\1.ffn.layers.0.1.', 'encoder FFN PReLU'),
    (r'^model\.encoder\.query_scale\.',   'encoder.query_scale.',               'encoder positional scale MLP'),
) + _HF_DAB_DECODER + (
    (r'^(?:bbox_predictor|model\.decoder\.bbox_embed)\.layers\.([0-2])\.', r'bbox_head.fc_reg.layers.\1.',
     'box MLP of every decoder layer (transformers 5.x bbox_predictor = 4.x model.decoder.bbox_embed; MMDetection DABDETR holds it once, as bbox_head.fc_reg)'),
    Rule(r'^class_embed\.', 'bbox_head.fc_cls.', 'classifier (rows remapped by remap_coco_classes)', ops=(DAB_DETR_CLASSES, ), unless='keep_classes'),
    (r'^model\.query_refpoint_embeddings\.', 'query_embedding.', 'learnable 4-d anchor boxes (the queries)'),
    (r'^model\.input_projection\.', 'neck.convs.0.conv.', 'input projection (1x1 conv with bias = ChannelMapper conv, no norm)'),
)

#: Every tensor of an RT-DETR file, kept only to name it (then refused).
HF_RT_DETR_RULES: Tuple[Rule, ...] = (
    (r'^', '', 'RT-DETR tensor (no MMDetection 3.3 model: not converted)'),
)
# fmt: on

RT_DETR_REASON = (
    'RT-DETR (transformers RTDetrForObjectDetection / '
    'RTDetrV2ForObjectDetection) is not supported: MMDetection 3.3 has no '
    'RT-DETR model (no hybrid encoder, no varifocal query selection), so '
    'no MMDetection config can load these weights; use transformers or '
    'the RT-DETR authors\' code')


def refuse_rt_detr(conv: Conversion, request: Request) -> None:
    """Format step: RT-DETR is recognised only to say why it is not
    converted."""
    raise ConversionError(RT_DETR_REASON)


_HF_DECODER_LAYER = re.compile(r'^model\.decoder\.layers\.(\d+)\.')


def _hf_decoder_layers(keys: Iterable[str]) -> int:
    """Decoder layers of a transformers DETR-family state dict."""
    return len({m.group(1) for m in map(_HF_DECODER_LAYER.match, keys)
                if m})


def hf_variant(conv: Conversion, request: Request) -> None:
    """Family step (transformers layouts): the model options and the config
    to build (summary, meta, hints); ``config.json``, when the source has
    one, must describe the same model.

    Raises:
        ConversionError: ``config.json`` names another model type, or
            other ``with_box_refine``/``two_stage``/``decoder_layers``
            than the weights have.
    """
    facts = conv.format.facts
    config, variant = hf_config(conv)
    cfg = conv.entries.get('config')
    if isinstance(cfg, Mapping) and 'model_type' in cfg:
        said = {'model_type': cfg['model_type'], **{
            k: cfg[k] for k in ('with_box_refine', 'two_stage',
                                'decoder_layers') if k in cfg}}
        have = {'model_type': facts['model_type'], **variant}
        wrong = [f'{k}={v!r} (the weights: {have[k]!r})'
                 for k, v in said.items() if have.get(k, v) != v]
        if wrong:
            raise ConversionError(
                f'config.json says {", ".join(wrong)}: it does not describe '
                f'these {conv.format.title} weights; fix the folder (or '
                'convert the weight file alone)')
        if cfg.get('dilation'):
            conv.notes.append(
                'config.json: dilation=True (DC5): build the ResNet with '
                'strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)')
    record_config(conv, config, variant)


def hf_config(conv: Conversion) -> Tuple[str, Dict[str, Any]]:
    """The config a transformers layout implies (named with the backbone
    depth, decoder layers and queries that differ from it) and its
    options."""
    facts = conv.format.facts
    depth = resnet_depth(k[len('backbone.'):] for k in conv.state_dict
                         if k.startswith('backbone.'))
    layers = _hf_decoder_layers(conv.source)
    variant: Dict[str, Any] = {'depth': depth, **facts.get('variant', {}),
                               'decoder_layers': layers}
    config = facts.get('configs', {}).get(depth, facts['config'])
    extra = [f'backbone depth={depth}'] if depth not in facts.get(
        'config_depths', (depth, )) else []
    if layers != OFFICIAL_DECODER_LAYERS:
        extra.append(f'decoder.num_layers={layers}')
    queries = conv.state_dict.get('query_embedding.weight')
    if queries is not None and queries.shape[0] != facts['queries']:
        extra.append(f'num_queries={queries.shape[0]}')
    if extra:
        config += f' (with {", ".join(extra)})'
    return config, variant


def hf_branches(conv: Conversion, request: Request) -> None:
    """Family step (transformers layouts): a head saved once is written
    into :data:`OFFICIAL_DECODER_LAYERS` branches (``facts['fan_out']``),
    and the two-stage proposal classifier is branch
    :data:`OFFICIAL_DECODER_LAYERS` with its rows kept by position
    (``facts['proposal_branch']``, unless ``--keep-classes``): both need
    that many decoder layers.

    Raises:
        ConversionError: The file has another number of decoder layers.
    """
    facts = conv.format.facts
    layers = _hf_decoder_layers(conv.source)
    n = OFFICIAL_DECODER_LAYERS
    if layers == n:
        return
    if facts.get('fan_out'):
        raise ConversionError(
            f'{conv.format.title} checkpoint with {layers} decoder layers: '
            f'its {facts["fan_out"]} saved once for every layer is written '
            f'into {n} MMDetection branches; mmconv converts the {n}-layer '
            'models of this layout only')
    if facts.get('proposal_branch') and not request.keep_classes:
        raise ConversionError(
            f'{conv.format.title} checkpoint with {layers} decoder layers: '
            f'mmconv converts the {n}-layer models only (its proposal '
            f'classifier, branch {n}, keeps its rows by position); use a '
            f'{n}-layer model, or --keep-classes')


DETR_HF_FAMILY = Family(
    'detr_hf', 'DETR-family detector (Hugging Face transformers)',
    options=('keep_classes', ), finish=(hf_variant, hf_branches, detr_notes),
    targets=('mmdet', ), module=_module(hf_config))

_HF_DEFORMABLE_SENTINELS = (
    r'^model\.level_embed$',
    r'^model\.encoder\.layers\.0\.self_attn\.sampling_offsets\.weight$')
_HF_TOP = ('state_dict', )


def _hf_facts(model_type: str, config: str, queries: int,
              **more: Any) -> Dict[str, Any]:
    """What a transformers layout implies: its ``config.json`` model type,
    the MMDetection config, its number of queries, and ``more``."""
    facts = dict(model_type=model_type, config=config, queries=queries,
                 config_depths=(50, ))
    facts.update(more)
    return facts


_DDETR = 'deformable_detr'
# fmt: off
DETR_HF_FORMATS: Tuple[SourceFormat, ...] = (
    SourceFormat(
        'hf_detr', 'detr_hf', 'DETR (transformers DetrForObjectDetection)',
        rules=HF_DETR_RULES, strict=True,
        sentinels=(r'^class_labels_classifier\.weight$', r'^model\.input_projection\.weight$',
                   r'^model\.decoder\.layers\.0\.encoder_attn\.q_proj\.weight$'),
        containers=_HF_TOP,
        released=('facebook/detr-resnet-50', 'facebook/detr-resnet-101'),
        source='transformers DetrForObjectDetection.save_pretrained (4.x and 5.x write the same)',
        facts=_hf_facts('detr', 'mmdet::detr/detr_r50_8xb2-150e_coco.py', 100,
                        configs={101: 'mmdet::detr/detr_r101_8xb2-500e_coco.py'},
                        config_depths=(50, 101), class_notes=(DETR_SOFTMAX_NOTE, ),
                        no_object=True)),
    SourceFormat(
        'hf_deformable_detr', 'detr_hf', 'Deformable DETR (transformers DeformableDetrForObjectDetection)',
        rules=HF_DEFORMABLE_DETR_RULES, strict=True,
        sentinels=_HF_DEFORMABLE_SENTINELS + (r'^model\.reference_points\.weight$', r'^class_embed\.0\.weight$'),
        containers=_HF_TOP, released=('SenseTime/deformable-detr', ),
        source='transformers DeformableDetrForObjectDetection.save_pretrained (4.x and 5.x write the same; '
        'class_embed/bbox_embed saved once)',
        facts=_hf_facts(_DDETR, f'{_FAMILY_CONFIGS}deformable-detr_r50_official_coco.py', 300,
                        variant=dict(with_box_refine=False, two_stage=False),
                        fan_out='classifier and box MLP')),
    SourceFormat(
        'hf_deformable_detr_refine', 'detr_hf', 'Deformable DETR, box refinement (transformers 5.x)',
        rules=HF_DEFORMABLE_DETR_REFINE_RULES, strict=True,
        sentinels=_HF_DEFORMABLE_SENTINELS + (r'^model\.reference_points\.weight$', r'^class_embed\.0\.weight$',
                                              r'^model\.decoder\.bbox_embed\.0\.layers\.0\.weight$'),
        containers=_HF_TOP, released=('SenseTime/deformable-detr-with-box-refine', ),
        source='transformers 5.x DeformableDetrForObjectDetection(with_box_refine=True).save_pretrained: '
        'one classifier for every layer (class_embed.N tied to class_embed.0)',
        facts=_hf_facts(_DDETR, f'{_FAMILY_CONFIGS}deformable-detr-refine_r50_official_coco.py', 300,
                        variant=dict(with_box_refine=True, two_stage=False),
                        fan_out='classifier')),
    SourceFormat(
        'hf_deformable_detr_refine_v4', 'detr_hf', 'Deformable DETR, box refinement (transformers 4.x pytorch_model.bin)',
        rules=HF_DEFORMABLE_DETR_REFINE_V4_RULES, strict=True,
        sentinels=_HF_DEFORMABLE_SENTINELS + (r'^model\.reference_points\.weight$', r'^class_embed\.0\.weight$',
                                              r'^model\.decoder\.bbox_embed\.0\.layers\.0\.weight$',
                                              r'^class_embed\.1\.weight$'),
        containers=_HF_TOP, released=('SenseTime/deformable-detr-with-box-refine', ),
        source='transformers 4.x DeformableDetrForObjectDetection(with_box_refine=True).save_pretrained: '
        'pytorch_model.bin (safetensors refused: shared tensors), bbox_embed.N = model.decoder.bbox_embed.N',
        facts=_hf_facts(_DDETR, f'{_FAMILY_CONFIGS}deformable-detr-refine_r50_official_coco.py', 300,
                        variant=dict(with_box_refine=True, two_stage=False))),
    SourceFormat(
        'hf_deformable_detr_twostage', 'detr_hf', 'Deformable DETR, box refinement + two-stage (transformers)',
        rules=HF_DEFORMABLE_DETR_TWO_STAGE_RULES, strict=True,
        sentinels=_HF_DEFORMABLE_SENTINELS + (r'^model\.enc_output\.weight$',
                                              r'^model\.decoder\.class_embed\.0\.weight$'),
        containers=_HF_TOP, released=('SenseTime/deformable-detr-with-box-refine-two-stage', ),
        source='transformers DeformableDetrForObjectDetection(with_box_refine=True, two_stage=True).save_pretrained '
        '(5.x: model.decoder.*_embed only; 4.x pytorch_model.bin: class_embed.N/bbox_embed.N aliases)',
        facts=_hf_facts(_DDETR, f'{_FAMILY_CONFIGS}deformable-detr-refine-twostage_r50_official_coco.py', 300,
                        variant=dict(with_box_refine=True, two_stage=True),
                        proposal_branch=True)),
    SourceFormat(
        'hf_conditional_detr', 'detr_hf', 'Conditional DETR (transformers ConditionalDetrForObjectDetection)',
        rules=HF_CONDITIONAL_DETR_RULES, strict=True,
        sentinels=(r'^class_labels_classifier\.weight$',
                   r'^model\.decoder\.layers\.0\.ca_qpos_sine_proj\.weight$'),
        containers=_HF_TOP, released=('microsoft/conditional-detr-resnet-50', ),
        source='transformers ConditionalDetrForObjectDetection.save_pretrained (4.x and 5.x write the same)',
        facts=_hf_facts('conditional_detr', 'mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py', 300)),
    SourceFormat(
        'hf_dab_detr', 'detr_hf', 'DAB-DETR (transformers DabDetrForObjectDetection)',
        rules=HF_DAB_DETR_RULES, strict=True,
        sentinels=(r'^model\.query_refpoint_embeddings\.weight$',
                   r'^model\.decoder\.layers\.0\.cross_attn\.cross_attn_query_pos_sine_proj\.weight$'),
        containers=_HF_TOP, released=('IDEA-Research/dab-detr-resnet-50', ),
        source='transformers DabDetrForObjectDetection.save_pretrained (box MLP: 5.x bbox_predictor, '
        '4.x model.decoder.bbox_embed)',
        facts=_hf_facts('dab-detr', 'mmdet::dab_detr/dab-detr_r50_8xb2-50e_coco.py', 300)),
    SourceFormat(
        'hf_rt_detr', 'detr_hf', 'RT-DETR (transformers; not supported: no MMDetection 3.3 model)',
        rules=HF_RT_DETR_RULES, strict=True,
        sentinels=(r'^model\.denoising_class_embed\.weight$', r'^model\.enc_score_head\.weight$',
                   r'^model\.encoder\.downsample_convs\.0\.'),
        containers=_HF_TOP, surgery=(refuse_rt_detr, ),
        source='transformers RTDetrForObjectDetection / RTDetrV2ForObjectDetection.save_pretrained',
        facts=dict(not_supported=RT_DETR_REASON)),
)
# fmt: on

__all__ += ['DETR_HF_FAMILY', 'DETR_HF_FORMATS', 'HF_DETR_RULES',
            'HF_DEFORMABLE_DETR_RULES', 'HF_DEFORMABLE_DETR_REFINE_RULES',
            'HF_DEFORMABLE_DETR_REFINE_V4_RULES',
            'HF_DEFORMABLE_DETR_TWO_STAGE_RULES',
            'HF_CONDITIONAL_DETR_RULES', 'HF_DAB_DETR_RULES',
            'RT_DETR_REASON']

register(DETR_HF_FAMILY, *DETR_HF_FORMATS)
