# Copyright (c) mmconv contributors. All rights reserved.
"""Streaming conversion: lazy tensors through the engine, the writer that
reads them one at a time, and conversions of safetensors sources that give
what the in-memory conversion gives while holding a bounded number of
tensors."""
import io
import weakref
import zipfile

import pytest
import torch

from mmconv.convert import apply_rules
from mmconv.errors import KeyCollisionError
from mmconv.lazy import is_lazy, lazy_tensor, load, materialize
from mmconv.ops import Chunk, Concatenate
from mmconv.report import ConversionReport
from mmconv.spec import Rule
from mmconv.writing import stream_save
from tests.helpers.tiers import sweep

safetensors = pytest.importorskip('safetensors.torch')


def _lazy(real: torch.Tensor, reads: list = None) -> torch.Tensor:
    """A lazy tensor reading ``real`` (a copy each time; ``reads`` counts
    the reads)."""

    def loader():
        if reads is not None:
            reads.append(1)
        return real.clone()

    return lazy_tensor(real.shape, real.dtype, loader)


# --- the engine on lazy tensors ---------------------------------------------
def test_engine_defers_ops_and_keeps_identity():
    """A merge and a fan-out on lazy inputs give lazy results with the
    values the eager engine gives; a plain rename keeps the lazy object;
    nothing is read twice before the writer asks."""
    torch.manual_seed(0)
    real = {'q.w': torch.randn(4, 3), 'k.w': torch.randn(4, 3),
            'v.w': torch.randn(4, 3), 'qkv.b': torch.randn(12),
            'norm.w': torch.randn(3)}
    rules = (
        Rule(r'^(?P<part>q|k|v)\.w$', 'attn.qkv.weight', 'attention',
             ops=(Concatenate(), ), parts=('q', 'k', 'v')),
        Rule(r'^qkv\.b$', ('a.bias', 'b.bias', 'c.bias'), 'split bias',
             ops=(Chunk(3), )),
        Rule(r'^norm\.w$', 'ln.weight', 'norm'),
    )
    reads = []
    lazy = {k: _lazy(v, reads) for k, v in real.items()}
    eager = apply_rules(real, rules, ConversionReport('x', 'x'))
    report = ConversionReport('x', 'x')
    out = apply_rules(lazy, rules, report)
    assert list(out) == list(eager)
    assert out['ln.weight'] is lazy['norm.w']
    assert all(is_lazy(v) for v in out.values())
    assert len(reads) == 4  # each op input read once, for the report
    for key, value in materialize(out).items():
        assert torch.equal(value, eager[key]), key
    assert [r.new for r in report.copies] == ['b.bias', 'c.bias']


def test_lazy_aliases_are_compared_by_value():
    """Two lazy tensors under one name are one tensor when their values
    are equal, a collision otherwise (as for real tensors)."""
    same = torch.arange(6.)
    rules = (Rule(r'^(a|b)$', 'x', 'one name'), )
    report = ConversionReport('x', 'x')
    apply_rules({'a': _lazy(same), 'b': _lazy(same.clone())}, rules, report)
    assert [r.old for r in report.aliases] == ['b']
    with pytest.raises(KeyCollisionError, match="'a' and 'b' both become"):
        apply_rules({'a': _lazy(same), 'b': _lazy(same + 1)}, rules,
                    ConversionReport('x', 'x'))


def test_a_meta_tensor_without_values_never_reaches_a_file():
    with pytest.raises(RuntimeError, match='without values'):
        load(torch.empty(2, device='meta'))


# --- the writer -------------------------------------------------------------
def _records(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename.split('/', 1)[1]: archive.read(info)
                for info in archive.infolist()}


def _checkpoint(make=lambda t: t) -> dict:
    torch.manual_seed(1)
    shared = torch.randn(3, 4)
    return {'state_dict': {
        'a': make(shared), 'b': make(torch.randn(5).to(torch.bfloat16)),
        'n': make(torch.tensor(7)), 'empty': make(torch.zeros(0, 3)),
        'i': make(torch.arange(4, dtype=torch.int64))},
        'meta': {'converter': 'mmconv', 'shapes': [[1, 2], 'x'],
                 'flag': True}}


def test_stream_save_writes_what_torch_save_writes(tmp_path):
    """The same records, pickle bytes and storage bytes as ``torch.save``
    for real and for lazy tensors; ``torch.load`` (weights-only, mmap or
    not) reads it back, and a tensor under two names stays one."""
    reference = io.BytesIO()
    real = _checkpoint()
    real['state_dict']['alias'] = real['state_dict']['a']
    torch.save(real, reference)
    expected = _records(reference.getvalue())
    for make in (lambda t: t, _lazy):
        checkpoint = _checkpoint(make)
        checkpoint['state_dict']['alias'] = checkpoint['state_dict']['a']
        buffer = io.BytesIO()
        stream_save(checkpoint, buffer)
        got = _records(buffer.getvalue())
        assert sorted(got) == sorted(expected)
        for name, data in expected.items():
            if name != '.data/serialization_id':
                assert got[name] == data, name
        path = str(tmp_path / 'out.pth')
        stream_save(checkpoint, path)
        for mmap in (False, True):
            loaded = torch.load(path, weights_only=True, mmap=mmap)
            assert loaded['meta'] == real['meta']
            for key, value in real['state_dict'].items():
                assert torch.equal(loaded['state_dict'][key], value), key
                assert loaded['state_dict'][key].dtype == value.dtype
            assert loaded['state_dict']['alias'].data_ptr() == \
                loaded['state_dict']['a'].data_ptr()


# --- conversions of files ---------------------------------------------------
def _built(build):
    """``build()``, or a skip where its reference library cannot build
    (the light legs: no mmdet or timm; transformers needs torch >= 2.6)."""
    try:
        return build()
    except ImportError as err:
        pytest.skip(f'the source needs {err}')


def _source_file(name: str, tmp_path, kind: str = 'safetensors') -> str:
    """The registry's ``name`` source as a file: its state dict as one
    ``.safetensors`` file (shared tensors saved as copies), or the whole
    checkpoint as ``torch.save`` writes it (``kind='pth'``)."""
    from mmconv.containers import unwrap
    from tests.fixtures.sources import SOURCES
    checkpoint = _built(lambda: SOURCES[name]().checkpoint)
    path = str(tmp_path / f'{name}.{kind}')
    if kind == 'pth':
        torch.save(checkpoint, path)
        return path
    flat = unwrap(checkpoint).state_dict
    safetensors.save_file({k: v.contiguous().clone()
                           for k, v in flat.items()}, path)
    return path


def _same_conversion(src: str, dst: str, **options) -> None:
    """``convert_file`` (streaming) writes what the in-memory conversion of
    the same file gives, with the same report."""
    from mmconv.pipeline import convert_checkpoint, convert_file
    from mmconv.reading import load_file
    eager = convert_checkpoint(load_file(src), **options)
    written = convert_file(src, dst, force=True, **options)
    streamed = written.conversion
    assert any(is_lazy(v) for v in streamed.source.values())
    assert (streamed.report.kept, streamed.report.aliases,
            streamed.report.dropped, streamed.report.copies) == \
        (eager.report.kept, eager.report.aliases, eager.report.dropped,
         eager.report.copies)
    assert streamed.changed == eager.changed
    out = torch.load(written.path, weights_only=True)
    out = out.get('state_dict', out) if isinstance(out, dict) else out
    assert list(out) == list(eager.state_dict)
    for key, value in eager.state_dict.items():
        assert out[key].dtype == value.dtype and torch.equal(
            out[key], value), key


#: Formats whose conversion exercises every engine path on lazy tensors:
#: merges (transformers q/k/v), ops reading other tensors (the DINOv3 K-bias
#: mask), derived tensors (timm DINOv3's zero bias), value changes
#: (ConvNeXt V2 FCMAE, Swin), aliases, training checkpoints (MoCo's
#: optimizer state is never read), a detector (two-stage DETR).
STREAMED = ('hf_vit', 'hf_dinov3_vit_gated', 'dinov3_vit', 'timm_dinov3',
            'hf_swin', 'convnextv2_fcmae', 'moco', 'densecl',
            'hf_deformable_detr_twostage')


#: (format, kind) cases, every engine path above once in the fast tier
STREAMED_CASES = [(n, k) for n in STREAMED for k in ('safetensors', 'pth')]


@pytest.mark.parametrize('name, kind', sweep(STREAMED_CASES, (
    'hf_vit-safetensors', 'dinov3_vit-pth', 'timm_dinov3-safetensors',
    'convnextv2_fcmae-pth', 'moco-pth',
    'hf_deformable_detr_twostage-safetensors'),
    [f'{n}-{k}' for n, k in STREAMED_CASES]))
def test_streamed_conversion_equals_in_memory(name, kind, tmp_path):
    src = _source_file(name, tmp_path, kind)
    _same_conversion(src, str(tmp_path / 'out.pth'))


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['safetensors', 'pth'])
@pytest.mark.parametrize('name', sorted(
    __import__('tests.fixtures.sources', fromlist=['SOURCES']).SOURCES))
def test_every_format_streams(name, kind, tmp_path):
    """The whole registry, as :func:`test_streamed_conversion_equals_in_memory`."""
    if name == 'vicreg' and kind == 'pth':
        pytest.skip('the fixture pickles a function (read with unsafe)')
    _same_conversion(_source_file(name, tmp_path, kind),
                     str(tmp_path / 'out.pth'))


def test_a_file_only_torch_reads_is_converted_whole(tmp_path, monkeypatch):
    """Where mmconv's reader refuses a file torch's weights-only loader
    reads, the conversion uses torch's (memory-mapped) tensors: the same
    result, not streamed."""
    pytest.importorskip('mmdet')
    from mmconv import torchzip
    from mmconv.picklescan import PickleRejected
    from mmconv.pipeline import convert_file
    from mmconv.reading import TORCH_WEIGHTS_ONLY_IS_SAFE
    if not TORCH_WEIGHTS_ONLY_IS_SAFE:
        pytest.skip("torch < 2.6 reads every file with mmconv's reader")
    src = _source_file('moco', tmp_path, 'pth')

    def refuse(path, allowed, lazy=False):
        raise PickleRejected('a construct only torch reads')

    monkeypatch.setattr(torchzip, 'load_torch_zip', refuse)
    written = convert_file(src, str(tmp_path / 'out.pth'))
    assert not any(is_lazy(v) for v in written.conversion.source.values())
    assert len(torch.load(written.path, weights_only=True)['state_dict']) \
        == 318


@pytest.mark.parametrize('to,dst', [('detectron2', 'out.pkl'),
                                    ('torchvision', 'out.pth'),
                                    (None, 'out.safetensors')])
def test_other_outputs_read_the_lazy_tensors(to, dst, tmp_path):
    """Targets with their own layout and safetensors output read the lazy
    tensors first, and give the in-memory result."""
    src = _source_file('hf_resnet', tmp_path)
    from mmconv.pipeline import convert_file, convert_state_dict
    from mmconv.reading import load_file
    options = {'target': to} if to else {}
    eager = convert_state_dict(load_file(src)['state_dict'], **options)
    written = convert_file(src, str(tmp_path / dst), **options)
    if dst.endswith('.pkl'):
        import pickle
        with open(written.path, 'rb') as f:
            model = pickle.load(f)['model']
        assert len(model) == len(eager.state_dict)
        return
    out = load_file(written.path)
    out = out['state_dict'] if 'state_dict' in out else out
    assert sorted(out) == sorted(eager.state_dict)
    assert all(torch.equal(out[k], v) for k, v in eager.state_dict.items())


def _dinov3_folder(folder: str, depth: int, safetensors: bool) -> None:
    """transformers' DINOv3 ViT (gated MLP, S widths) of ``depth`` blocks,
    saved in shards (``.safetensors``, or ``pytorch_model-*.bin``)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    config = DINOv3ViTConfig(
        hidden_size=384, num_hidden_layers=depth, num_attention_heads=6,
        intermediate_size=1536, use_gated_mlp=True, num_register_tokens=4,
        image_size=224, patch_size=16)
    DINOv3ViTModel(config).save_pretrained(
        folder, max_shard_size='2MB', safe_serialization=safetensors)


@pytest.mark.parametrize('kind', ['safetensors', 'bin'])
def test_streaming_holds_a_bounded_number_of_tensors(kind, tmp_path,
                                                     monkeypatch):
    """Converting a sharded transformers DINOv3 folder reads every tensor
    but holds at most a few at a time: the peak of read tensors alive is
    the same at 2 and 8 blocks, below three times the largest tensor
    written (safetensors shards, and torch zip shards)."""
    from mmconv import lazy, reading, torchzip
    from mmconv.pipeline import convert_file
    live = {'now': 0, 'peak': 0, 'total': 0}

    def tracked(shape, dtype, loader):
        def load():
            tensor = loader()
            size = tensor.numel() * tensor.element_size()
            live['now'] += size
            live['total'] += size
            live['peak'] = max(live['peak'], live['now'])
            weakref.finalize(tensor, _release, live, size)
            return tensor
        return lazy.lazy_tensor(shape, dtype, load)

    monkeypatch.setattr(reading, 'lazy_tensor', tracked)
    monkeypatch.setattr(torchzip, 'lazy_tensor', tracked)
    peaks = {}
    for depth in (2, 8):
        folder = str(tmp_path / f'hf{depth}')
        _built(lambda: _dinov3_folder(folder, depth, kind == 'safetensors'))
        live.update(now=0, peak=0, total=0)
        written = convert_file(folder, str(tmp_path / f'{depth}.pth'))
        out = torch.load(written.path, weights_only=True)['state_dict']
        largest = max(v.numel() * v.element_size() for v in out.values())
        source = sum(v.numel() * v.element_size() for v in
                     written.conversion.source.values())
        assert live['total'] >= source  # every tensor was read
        assert live['peak'] <= 3 * largest, (live, largest)
        peaks[depth] = live['peak']
    assert peaks[8] == peaks[2]


def _release(live: dict, size: int) -> None:
    live['now'] -= size


def test_a_failed_read_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """A source tensor that cannot be read when it is written (the file
    changed under the conversion) fails in one line, and neither DST nor a
    temporary file is left."""
    from mmconv import reading
    from mmconv.errors import InputError
    from mmconv.pipeline import convert_file, load_and_convert
    src = _source_file('hf_vit', tmp_path)
    read, calls = reading._safetensors_tensor, []

    def counting(path, key):
        calls.append(key)
        return read(path, key)

    monkeypatch.setattr(reading, '_safetensors_tensor', counting)
    load_and_convert(src, lazy=True)
    planned, calls[:] = len(calls), []  # reads before the writer starts

    def failing(path, key):
        calls.append(key)
        if len(calls) > planned + 2:  # the third tensor written
            raise InputError(f'{path}: cannot read {key!r}; check the file')
        return read(path, key)

    monkeypatch.setattr(reading, '_safetensors_tensor', failing)
    out = tmp_path / 'out' / 'converted.pth'
    out.parent.mkdir()
    with pytest.raises(InputError, match='cannot read'):
        convert_file(src, str(out))
    assert list(out.parent.iterdir()) == []


def test_publish_hashes_the_streamed_file(tmp_path):
    import hashlib
    from mmconv.pipeline import convert_file
    src = _source_file('hf_dinov3_vit', tmp_path)
    written = convert_file(src, str(tmp_path / 'vit.pth'), publish=True)
    with open(written.path, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == written.sha256
    assert written.path.endswith(f'-{written.sha256[:8]}.pth')
    out = torch.load(written.path, weights_only=True)['state_dict']
    assert len(out) == len(written.conversion.state_dict)


@pytest.mark.parametrize('kind', ['safetensors', 'pth'])
def test_a_source_removed_before_writing_is_an_input_error(kind, tmp_path):
    """A source file removed between reading and writing: an input error
    naming it (exit 3), not an output error, and nothing written."""
    import os

    from mmconv.errors import InputError
    from mmconv.pipeline import build_output, load_and_convert
    from mmconv.writing import save_file
    src = _source_file('moco', tmp_path, kind)
    conv = load_and_convert(src, lazy=True)
    os.remove(src)
    out = tmp_path / 'out'
    out.mkdir()
    with pytest.raises(InputError, match=src):
        save_file(build_output(conv, src), str(out / 'converted.pth'))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize('step', ['computes', 'reads_values'])
def test_a_surgery_step_of_code_gets_real_tensors(step, tmp_path):
    """A format declared with a surgery function (code, not declared ops)
    that computes on a tensor, or reads its values, converts a streamed
    source as it converts one in memory (read whole)."""
    from mmconv import unregister
    from mmconv.pipeline import convert_checkpoint, convert_file
    from mmconv.reading import load_file
    from mmconv.spec import Family, SourceFormat, register

    def surgery(conv, request):
        weight = conv.state_dict['fc.weight']
        if step == 'reads_values' and float(weight.abs().sum()) == 0:
            return
        conv.state_dict['fc.weight'] = weight.t().contiguous() * 2

    family = Family('lazytoy', 'Lazy toy network')
    fmt = SourceFormat('lazytoy', 'lazytoy', 'Lazy toy layout',
                       rules=((r'^lt\.head\.', 'fc.', 'head'), ),
                       sentinels=(r'^lt\.head\.weight$', ),
                       surgery=(surgery, ))
    register(family, fmt)
    try:
        src = str(tmp_path / 'toy.pth')
        torch.save({'lt.head.weight': torch.randn(2, 3)}, src)
        eager = convert_checkpoint(load_file(src))
        written = convert_file(src, str(tmp_path / 'out.pth'))
        out = torch.load(written.path, weights_only=True)['state_dict']
        assert torch.equal(out['fc.weight'], eager.state_dict['fc.weight'])
    finally:
        unregister(fmt, family)


def test_a_dtype_without_a_storage_type_is_read_whole(tmp_path):
    """A lazy tensor whose dtype ``torch.save`` names no storage type for
    (float8) is read first and written by ``torch.save``: values, not a
    meta tensor, reach the file."""
    from mmconv.writing import save_file
    real = torch.arange(6.).reshape(2, 3).to(torch.float8_e4m3fn)
    try:
        torch.save(real, io.BytesIO())
    except KeyError:
        pytest.skip(f'torch {torch.__version__} cannot save float8')
    path = save_file({'state_dict': {'w': _lazy(real)}, 'meta': {}},
                     str(tmp_path / 'out.pth'))[0]
    loaded = torch.load(path, weights_only=True)['state_dict']['w']
    assert loaded.device.type == 'cpu' and loaded.dtype == real.dtype
    assert torch.equal(loaded.float(), real.float())
