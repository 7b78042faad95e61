# Copyright (c) mmconv contributors. All rights reserved.
"""Hugging Face sources (:mod:`mmconv.hub`): ``save_pretrained`` folders,
sharded folders, lone weight files and ``hf://`` names from a hub cache laid
out in a temporary directory (offline), through every face: one
checkpoint with the files' own key names and ``config.json`` as data; the
same output as the same tensors in a ``.pth``; one-line errors for folders
that are not complete models."""
import hashlib
import json
import os
import subprocess
import sys
from typing import Dict, List

import pytest
import torch

from mmconv import InputError, UnsafeCheckpointError, UsageError, load_source
from mmconv.cli import main
from mmconv.containers import Assembled, unwrap

timm = pytest.importorskip('timm')
transformers = pytest.importorskip('transformers')
huggingface_hub = pytest.importorskip('huggingface_hub')

BIN = os.path.dirname(sys.executable)
MMCONV = os.path.join(BIN, 'mmconv')
#: A commit hash of the hand-laid hub cache (any 40 hex digits).
COMMIT = hashlib.sha1(b'mmconv tiny vit').hexdigest()
#: timm ViT, tiny: detected as timm_vit, converted to ViTDet.
VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


# ----------------------------------------------------------------- builders


@pytest.fixture(scope='module')
def vit_sd() -> Dict[str, torch.Tensor]:
    """A timm ViT state dict (a format mmconv converts) with random
    weights."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(num_classes=0, **VIT).state_dict()


def _hf_vit(classifier: bool = False):
    """A tiny transformers ViT (random weights, no download)."""
    from transformers import (ViTConfig, ViTForImageClassification,
                              ViTModel)
    torch.manual_seed(1)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=3)
    return (ViTForImageClassification if classifier else ViTModel)(config)


def _write_shards(sd: Dict[str, torch.Tensor], folder, kind: str,
                  max_shard_size: int) -> List[str]:
    """Shard ``sd`` as ``save_pretrained`` does (huggingface_hub's own
    planner): shards and ``<weights>.index.json``; the shard names."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file
    pattern = 'model{suffix}.safetensors' if kind == 'safetensors' \
        else 'pytorch_model{suffix}.bin'
    plan = split_torch_state_dict_into_shards(
        sd, filename_pattern=pattern, max_shard_size=max_shard_size)
    assert plan.is_sharded
    for shard, keys in plan.filename_to_tensors.items():
        part = {k: sd[k].contiguous() for k in keys}
        if kind == 'safetensors':
            save_file(part, str(folder / shard), metadata={'format': 'pt'})
        else:
            torch.save(part, str(folder / shard))
    index = 'model.safetensors.index.json' if kind == 'safetensors' \
        else 'pytorch_model.bin.index.json'
    (folder / index).write_text(json.dumps(
        {'metadata': plan.metadata, 'weight_map': plan.tensor_to_filename}))
    return sorted(plan.filename_to_tensors)


CONFIG = {'architectures': ['VisionTransformer'], 'model_type': 'vit',
          'num_attention_heads': 2, 'id2label': {'0': 'a', '1': 'b'}}


def hf_folder(sd: Dict[str, torch.Tensor], folder, form: str,
              config: bool = True):
    """Write ``sd`` as the Hugging Face ``form``: ``safetensors``,
    ``bin``, ``sharded-safetensors``, ``sharded-bin``."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    if config:
        (folder / 'config.json').write_text(json.dumps(CONFIG))
    if form == 'safetensors':
        save_file(sd, str(folder / 'model.safetensors'),
                  metadata={'format': 'pt'})
    elif form == 'bin':
        torch.save(sd, str(folder / 'pytorch_model.bin'))
    else:
        shards = _write_shards(sd, folder, form.split('-')[1], 20_000)
        assert len(shards) > 2
    return folder


def lay_out_hub_cache(cache, repo_id: str, folder, commit: str = COMMIT,
                      ref: str = 'main') -> None:
    """Put the files of ``folder`` into a huggingface_hub cache as a
    download leaves them: ``blobs/<sha256>``, ``snapshots/<commit>/<name>``
    links to them, ``refs/<ref>`` holding the commit."""
    from huggingface_hub.file_download import repo_folder_name
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type='model')
    blobs, snapshot = repo / 'blobs', repo / 'snapshots' / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (blobs / blob).write_bytes(data)
        (snapshot / path.name).symlink_to(
            os.path.join('..', '..', 'blobs', blob))
    (repo / 'refs').mkdir(exist_ok=True)
    (repo / 'refs' / ref).write_text(commit)


def _env(cache) -> Dict[str, str]:
    """The user's environment, offline, with ``cache`` as the hub cache."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTEST_XDIST_WORKER')
           and not k.startswith('HF_')}
    env.update(HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache),
               HF_HOME=str(cache.parent / 'hf_home'),
               HF_HUB_DISABLE_TELEMETRY='1')
    return env


def run_mmconv(args: List[str], cache) -> subprocess.CompletedProcess:
    """The installed ``mmconv`` command, offline."""
    return subprocess.run([MMCONV, *map(str, args)], env=_env(cache),
                          capture_output=True, text=True, timeout=300)


def _one_error_line(stderr: str) -> str:
    assert 'Traceback' not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope='module')
def reference(vit_sd, tmp_path_factory):
    """The conversion of ``vit_sd`` saved as a plain ``.pth``."""
    from mmconv.pipeline import convert_file
    tmp = tmp_path_factory.mktemp('ref')
    torch.save(vit_sd, str(tmp / 'vit.pth'))
    convert_file(str(tmp / 'vit.pth'), str(tmp / 'out.pth'))
    return torch.load(str(tmp / 'out.pth'), weights_only=True)


def _same_output(path, reference) -> None:
    """``path`` (weights-only readable) holds what the ``.pth`` gave."""
    out = torch.load(str(path), weights_only=True)
    assert set(out['state_dict']) == set(reference['state_dict'])
    for key, value in reference['state_dict'].items():
        assert torch.equal(out['state_dict'][key], value), key
    assert out['meta']['source_format'] == 'timm_vit'


# -------------------------------------------------- the loaded checkpoint


@pytest.mark.parametrize('form', ['safetensors', 'bin',
                                  'sharded-safetensors', 'sharded-bin'])
def test_transformers_folder_is_one_checkpoint(form, tmp_path):
    """A transformers ViT written in each form loads as one checkpoint:
    every tensor under the name its file gives it (transformers 5 saves
    the original HF names, not its in-memory ones), config.json as plain
    data."""
    from safetensors.torch import load_file as read_safetensors
    model = _hf_vit(classifier=True)
    model.save_pretrained(str(tmp_path / 'single'))
    expected = read_safetensors(str(tmp_path / 'single' /
                                    'model.safetensors'))
    assert 'vit.embeddings.patch_embeddings.projection.weight' in expected
    assert 'vit.encoder.layer.0.attention.attention.query.weight' in expected
    folder = tmp_path / 'vit'
    if form == 'safetensors':
        folder = tmp_path / 'single'
    elif form == 'sharded-safetensors':
        model.save_pretrained(str(folder), max_shard_size='20KB')
        assert (folder / 'model.safetensors.index.json').is_file()
    else:  # transformers 5 writes no .bin: as transformers 4 did
        model.config.save_pretrained(str(folder))
        if form == 'bin':
            torch.save(expected, str(folder / 'pytorch_model.bin'))
        else:
            _write_shards(expected, folder, 'bin', 20_000)
    loaded = load_source(str(folder))
    assert isinstance(loaded, Assembled)
    assert set(loaded) == {'state_dict', 'config', 'meta'}
    assert set(loaded['state_dict']) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded['state_dict'][key], value), key
    config = json.loads((folder / 'config.json').read_text())
    assert loaded['config'] == config
    assert loaded['config']['architectures'] == ['ViTForImageClassification']
    assert loaded['config']['id2label'] == {'0': 'LABEL_0', '1': 'LABEL_1',
                                            '2': 'LABEL_2'}
    assert loaded['meta'] == ({'format': 'pt'} if 'safetensors' in form
                              else {})
    got = unwrap(loaded)
    assert got.ignored == [] and got.where == "checkpoint['state_dict']"


def test_a_weight_file_inside_a_folder_brings_its_config(vit_sd, tmp_path):
    """model.safetensors / pytorch_model.bin / an index named inside a
    folder read with the folder's config.json; alone, without it."""
    for form, name in (('safetensors', 'model.safetensors'),
                       ('bin', 'pytorch_model.bin'),
                       ('sharded-bin', 'pytorch_model.bin.index.json')):
        folder = hf_folder(vit_sd, tmp_path / form, form)
        loaded = load_source(str(folder / name))
        assert loaded['config'] == CONFIG, form
        assert set(loaded['state_dict']) == set(vit_sd), form
        (folder / 'config.json').unlink()
        alone = load_source(str(folder / name))
        assert 'config' not in alone, form
        assert set(unwrap(alone).state_dict) == set(vit_sd), form


# --------------------------------------- same output as the .pth, per face


FORMS = ['safetensors', 'bin', 'sharded-safetensors', 'sharded-bin',
         'lone-safetensors', 'lone-bin']


def _source(form: str, vit_sd, tmp_path):
    """``vit_sd`` written as ``form``; the path to give."""
    lone = form.startswith('lone-')
    folder = hf_folder(vit_sd, tmp_path / 'src', form.replace('lone-', ''),
                       config=not lone)
    if not lone:
        return folder
    return folder / ('model.safetensors' if form == 'lone-safetensors'
                     else 'pytorch_model.bin')


@pytest.mark.parametrize('form', FORMS)
def test_every_form_converts_as_the_pth(form, vit_sd, reference, tmp_path,
                                        capsys):
    """Each form converts (mmconv convert) to exactly what the same tensors
    in a .pth give, readable weights-only; config/meta are not reported as
    not converted; inspect reads it too."""
    src, dst = _source(form, vit_sd, tmp_path), tmp_path / 'out.pth'
    assert main(['convert', str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert 'format:   timm_vit' in out and 'not converted' not in out
    _same_output(dst, reference)
    assert main(['inspect', '--json', str(src)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['format'] == 'timm_vit'
    assert report['ignored_entries'] == []


@pytest.mark.slow
@pytest.mark.parametrize('form', FORMS)
def test_every_form_through_the_installed_command(form, vit_sd, reference,
                                                  tmp_path):
    """The same through the installed ``mmconv`` executable."""
    src, dst = _source(form, vit_sd, tmp_path), tmp_path / 'out.pth'
    proc = run_mmconv(['convert', src, dst], tmp_path / 'cache')
    assert proc.returncode == 0, proc.stderr
    assert 'format:   timm_vit' in proc.stdout
    assert 'not converted' not in proc.stdout
    _same_output(dst, reference)


def _hub_cache(vit_sd, tmp_path):
    """A hub cache holding mmconv-test/tiny-vit (one file) and
    mmconv-test/tiny-vit-sharded, checked with huggingface_hub's own
    scanner."""
    from huggingface_hub import scan_cache_dir
    cache = tmp_path / 'cache'
    lay_out_hub_cache(cache, 'mmconv-test/tiny-vit',
                      hf_folder(vit_sd, tmp_path / 'single', 'safetensors'))
    lay_out_hub_cache(cache, 'mmconv-test/tiny-vit-sharded',
                      hf_folder(vit_sd, tmp_path / 'sharded',
                                'sharded-safetensors'))
    info = {r.repo_id: r for r in scan_cache_dir(cache).repos}
    assert set(info) == {'mmconv-test/tiny-vit',
                         'mmconv-test/tiny-vit-sharded'}
    assert [r.commit_hash for r in info['mmconv-test/tiny-vit'].revisions
            ] == [COMMIT]
    return cache


HF_NAMES = ['hf://mmconv-test/tiny-vit', f'hf://mmconv-test/tiny-vit@{COMMIT}',
            'hf://models/mmconv-test/tiny-vit-sharded@main']


@pytest.fixture
def offline_hub(monkeypatch):
    """huggingface_hub (already imported here) offline, on a given cache."""
    from huggingface_hub import constants

    def use(cache):
        monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
        monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
        monkeypatch.setenv('HF_HUB_OFFLINE', '1')
        monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    return use


def test_hf_names_resolve_through_the_offline_cache(vit_sd, reference,
                                                     tmp_path, capsys,
                                                     offline_hub):
    """hf://ORG/NAME, @<commit> and a sharded model @main: the cached
    snapshot, converted as the .pth; the config reaches the entries."""
    from mmconv.pipeline import load_and_convert
    offline_hub(_hub_cache(vit_sd, tmp_path))
    for i, name in enumerate(HF_NAMES):
        dst = tmp_path / f'out{i}.pth'
        assert main(['convert', name, str(dst)]) == 0, name
        assert 'not converted' not in capsys.readouterr().out
        _same_output(dst, reference)
    conv = load_and_convert(HF_NAMES[2])
    assert conv.entries['config'] == CONFIG
    assert conv.report.ignored_entries == []


@pytest.mark.slow
def test_hf_names_through_the_installed_command(vit_sd, reference,
                                                tmp_path):
    """The installed command with HF_HUB_OFFLINE=1 and HF_HUB_CACHE."""
    cache = _hub_cache(vit_sd, tmp_path)
    for i, name in enumerate(HF_NAMES):
        dst = tmp_path / f'out{i}.pth'
        proc = run_mmconv(['convert', name, dst], cache)
        assert proc.returncode == 0, proc.stderr
        _same_output(dst, reference)
    proc = run_mmconv(['inspect', '--json', HF_NAMES[0]], cache)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)['format'] == 'timm_vit'


def test_mmengine_loader_reads_folders_and_hf_names(vit_sd, tmp_path,
                                                   offline_hub):
    """With mmconv imported, MMEngine's own CheckpointLoader (Pretrained,
    load_from) reads a folder and an hf:// name through the same reader."""
    import mmconv  # noqa: F401 (registers the loader once MMEngine's is in)
    from mmengine.runner.checkpoint import CheckpointLoader
    offline_hub(_hub_cache(vit_sd, tmp_path))
    folder = hf_folder(vit_sd, tmp_path / 'vit', 'sharded-bin')
    for name in (str(folder), HF_NAMES[2]):
        loaded = CheckpointLoader.load_checkpoint(name)
        assert loaded['config'] == CONFIG, name
        assert set(loaded['state_dict']) == set(vit_sd), name


def test_a_training_checkpoint_named_like_hf_weights(tmp_path):
    """Given as a file, a pytorch_model.bin that is no bare state dict
    (beside a config.json) loads as the checkpoint it is."""
    folder = tmp_path / 'run'
    folder.mkdir()
    _training_checkpoint_in(folder)
    loaded = load_source(str(folder / 'pytorch_model.bin'))
    assert set(loaded) == {'state_dict', 'epoch'}
    assert unwrap(loaded).ignored == ['epoch']


def test_errors_in_a_cached_model_name_it(vit_sd, tmp_path, offline_hub):
    """A broken file of a cached hf:// model: the error names hf://..."""
    cache = _hub_cache(vit_sd, tmp_path)
    offline_hub(cache)
    snapshot = next(cache.glob('models--*--tiny-vit/snapshots/*'))
    (snapshot / 'config.json').unlink()
    (snapshot / 'config.json').write_text('[')
    with pytest.raises(InputError) as err:
        load_source(HF_NAMES[0])
    assert str(err.value).startswith(
        'hf://mmconv-test/tiny-vit/config.json: not valid JSON')


def test_safetensors_preferred_as_from_pretrained_does(vit_sd, tmp_path):
    """A folder with both weight files reads model.safetensors."""
    folder = hf_folder(vit_sd, tmp_path / 'vit', 'safetensors')
    torch.save({k: torch.zeros_like(v) for k, v in vit_sd.items()},
               str(folder / 'pytorch_model.bin'))
    got = load_source(str(folder))['state_dict']
    assert all(torch.equal(got[k], v) for k, v in vit_sd.items())


@pytest.mark.parametrize('remote', ['safetensors+bin', 'sharded+bin',
                                    'sharded-bin', 'bin'])
def test_hf_names_fetch_only_the_weights_they_read(remote, vit_sd, tmp_path,
                                                   monkeypatch):
    """What is asked of the Hub: config.json and, in from_pretrained's
    order, model.safetensors, else the shards its index names, else
    pytorch_model.bin or its shards; never a second format, never
    TensorFlow weights. (huggingface_hub's snapshot_download stands in
    for the Hub: it copies the files matching allow_patterns.)"""
    import fnmatch
    import shutil

    import huggingface_hub
    repo = tmp_path / 'remote'
    kind = {'safetensors+bin': 'safetensors', 'sharded+bin':
            'sharded-safetensors', 'sharded-bin': 'sharded-bin',
            'bin': 'bin'}[remote]
    hf_folder(vit_sd, repo, kind)
    if remote.endswith('+bin'):
        torch.save(vit_sd, str(repo / 'pytorch_model.bin'))
    (repo / 'tf_model.h5').write_bytes(b'tf')
    snapshot, asked = tmp_path / 'snapshot', []

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None,
                          **kwargs):
        assert (repo_id, revision) == ('org/tiny', 'v1')
        asked.append(list(allow_patterns))
        snapshot.mkdir(exist_ok=True)
        for path in repo.iterdir():
            if any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                shutil.copy(path, snapshot / path.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, 'snapshot_download',
                        snapshot_download)
    loaded = load_source('hf://org/tiny@v1')
    assert loaded['config'] == CONFIG
    assert set(loaded['state_dict']) == set(vit_sd)
    fetched = sorted(p.name for p in snapshot.iterdir())
    weights = {'safetensors+bin': ['model.safetensors'],
               'bin': ['pytorch_model.bin']}
    index = 'pytorch_model.bin.index.json' if remote == 'sharded-bin' \
        else 'model.safetensors.index.json'
    shards = sorted(set(json.loads((repo / index).read_text())[
        'weight_map'].values())) if 'sharded' in remote else []
    assert fetched == sorted(['config.json'] + weights.get(remote, [])
                             + shards + ([index] if shards else []))
    assert asked[0] == ['config.json', 'model.safetensors',
                        'model.safetensors.index.json',
                        'pytorch_model.bin.index.json']
    assert asked[1:] == ([shards] if shards else [['pytorch_model.bin']]
                         if remote == 'bin' else [])


def _hub_exception(name: str) -> Exception:
    """An instance of huggingface_hub's error ``name`` (HTTP errors need a
    response to construct; only the type matters here)."""
    from huggingface_hub import errors
    cls = getattr(errors, name, None) or ConnectionError
    err = cls.__new__(cls)
    Exception.__init__(err, f'{name} raised by the hub')
    return err


@pytest.mark.parametrize('error, code, expected', [
    ('RepositoryNotFoundError', 3, 'no such model on the Hugging Face Hub'),
    ('GatedRepoError', 3, 'a gated model'),
    ('RevisionNotFoundError', 3, "the model has no revision 'v1'"),
    ('HFValidationError', 2, 'not a valid Hugging Face repository name'),
    ('ConnectionError', 3, 'download from the Hugging Face Hub failed '
     '(ConnectionError'),
])
def test_hub_errors_are_one_line(error, code, expected, tmp_path, capsys,
                                 monkeypatch):
    import huggingface_hub

    def snapshot_download(*args, **kwargs):
        raise _hub_exception(error)

    monkeypatch.setattr(huggingface_hub, 'snapshot_download',
                        snapshot_download)
    dst = tmp_path / 'out.pth'
    assert main(['convert', 'hf://org/tiny@v1', str(dst)]) == code
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith('error: hf://org/tiny@v1: ') and expected in line
    assert not dst.exists()


def test_hf_name_not_cached_offline_is_one_line_exit_3(tmp_path, capsys,
                                                       offline_hub):
    cache = tmp_path / 'cache'
    offline_hub(cache)
    dst = tmp_path / 'out.pth'
    assert main(['convert', 'hf://mmconv-test/not-there', str(dst)]) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert 'hf://mmconv-test/not-there' in line
    assert 'HF_HUB_OFFLINE' in line and str(cache) in line
    assert not dst.exists()


@pytest.mark.slow
def test_hf_name_not_cached_through_the_installed_command(tmp_path):
    dst = tmp_path / 'out.pth'
    proc = run_mmconv(['convert', 'hf://mmconv-test/not-there', dst],
                      tmp_path / 'cache')
    assert proc.returncode == 3
    line = _one_error_line(proc.stderr)
    assert 'hf://mmconv-test/not-there' in line and 'HF_HUB_OFFLINE' in line
    assert not dst.exists()


@pytest.mark.parametrize('name', ['hf://', 'hf://a/b/c',
                                  'hf://datasets/org/data',
                                  'hf://org/name@'])
def test_malformed_hf_names_are_usage_errors(name, tmp_path, capsys):
    dst = tmp_path / 'out.pth'
    assert main(['convert', name, str(dst)]) == 2
    assert name in _one_error_line(capsys.readouterr().err)
    assert not dst.exists()


def test_hf_name_without_huggingface_hub(monkeypatch):
    """Without the optional dependency: one line naming the extra."""
    monkeypatch.setitem(sys.modules, 'huggingface_hub', None)
    with pytest.raises(UsageError, match=r"pip install 'mmconv\[hf\]'"):
        load_source('hf://org/name')


def test_selfsup_pretrained_reads_a_folder(vit_sd, reference, tmp_path):
    """The initializer converts a sharded folder in memory, like the
    command line."""
    from mmconv.init import SelfSupPretrainedInit
    from mmconv.models import ViTDet
    folder = hf_folder(vit_sd, tmp_path / 'vit', 'sharded-safetensors')
    model = ViTDet(**VIT, window_size=0, global_attn_indexes=(),
                   use_rel_pos=False, final_norm=True)
    ref = reference['state_dict']
    init = SelfSupPretrainedInit(checkpoint=str(folder))
    init(model)
    assert init.format_name == 'timm_vit'
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref[key]), key


def test_check_and_hook_read_folders(vit_sd, tmp_path):
    """``mmconv check`` and the load-check hook read their files through
    load_unwrapped: a folder gives its tensors."""
    from mmconv.pipeline import load_unwrapped
    folder = hf_folder(vit_sd, tmp_path / 'vit', 'sharded-bin')
    got = load_unwrapped(str(folder))
    assert set(got.state_dict) == set(vit_sd)
    for key, value in vit_sd.items():
        assert torch.equal(got.state_dict[key], value), key


# ------------------------------------------------------------ bad folders


def _corrupt_index(folder) -> None:
    index = folder / 'model.safetensors.index.json'
    data = json.loads(index.read_text())
    data['weight_map']['blocks.0.norm1.weight'] = 'model-00009-of-00009.' \
        'safetensors'
    index.write_text(json.dumps(data))


def _unlisted_tensor(folder) -> None:
    index = folder / 'model.safetensors.index.json'
    data = json.loads(index.read_text())
    del data['weight_map']['blocks.0.norm1.weight']
    index.write_text(json.dumps(data))


def _shard_lacks_tensor(folder) -> None:
    index = folder / 'model.safetensors.index.json'
    data = json.loads(index.read_text())
    data['weight_map']['blocks.9.extra'] = data['weight_map']['pos_embed']
    index.write_text(json.dumps(data))


def _path_in_index(folder) -> None:
    index = folder / 'model.safetensors.index.json'
    data = json.loads(index.read_text())
    data['weight_map']['pos_embed'] = '../model.safetensors'
    index.write_text(json.dumps(data))


def _training_checkpoint_in(folder):
    (folder / 'config.json').write_text('{}')
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'epoch': 3},
               str(folder / 'pytorch_model.bin'))


BAD = {
    'empty directory': (None, None, 'is an empty directory'),
    'config.json, no weights': (
        None, lambda f: (f / 'config.json').write_text('{}'),
        'has config.json but no weights'),
    'TensorFlow weights only': (
        None, lambda f: (f / 'tf_model.h5').write_bytes(b'x'),
        'TensorFlow/Flax'),
    'a plain checkpoint in a directory': (
        None, lambda f: torch.save({}, str(f / 'ckpt.pth')),
        'give the checkpoint file inside it (ckpt.pth)'),
    'config.json not JSON': (
        'safetensors', lambda f: (f / 'config.json').write_text('{'),
        'config.json: not valid JSON'),
    'index names a missing shard': (
        'sharded-safetensors', _corrupt_index,
        'names the shard model-00009-of-00009.safetensors, which is '
        'missing'),
    'shard holds a tensor the index does not list': (
        'sharded-safetensors', _unlisted_tensor,
        "holds the tensor 'blocks.0.norm1.weight', which "
        'model.safetensors.index.json does not list'),
    'shard lacks a tensor of the index': (
        'sharded-safetensors', _shard_lacks_tensor,
        "lacks the tensor 'blocks.9.extra'"),
    'index names a path': (
        'sharded-safetensors', _path_in_index,
        "names the shard '../model.safetensors', which is not a file name"),
    'pytorch_model.bin is a training checkpoint': (
        None, lambda f: _training_checkpoint_in(f),
        'not a state dict of tensors (a dict), as Hugging Face weight '
        'files are; give this file'),
    'index without weight_map': (
        'sharded-safetensors',
        lambda f: (f / 'model.safetensors.index.json').write_text('[]'),
        'not a shard index'),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_folders_are_one_line_exit_3(case, vit_sd, tmp_path, capsys):
    form, spoil, expected = BAD[case]
    folder = tmp_path / 'src'
    if form is None:
        folder.mkdir()
    else:
        hf_folder(vit_sd, folder, form)
    if spoil is not None:
        spoil(folder)
    dst = tmp_path / 'out.pth'
    for command in (['convert', str(folder), str(dst)],
                    ['inspect', str(folder)]):
        assert main(command) == 3, case
        line = _one_error_line(capsys.readouterr().err)
        assert expected in line, line
        assert str(folder) in line
    assert not dst.exists()
    with pytest.raises(InputError):
        load_source(str(folder))


@pytest.mark.slow
def test_bad_folder_through_the_command(tmp_path):
    """The installed command: exit 3, one line, nothing written."""
    folder = tmp_path / 'empty'
    folder.mkdir()
    dst = tmp_path / 'out.pth'
    proc = run_mmconv(['convert', folder, dst], tmp_path / 'cache')
    assert proc.returncode == 3
    assert str(folder) in _one_error_line(proc.stderr)
    assert not dst.exists()


class _Payload:
    """Unpickling this runs ``os.system`` (creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_a_pickle_payload_in_a_shard_is_refused(vit_sd, tmp_path, capsys):
    """Every .bin shard is read weights-only with the allowlist: a
    payload in one of them is refused (exit 4) and never runs."""
    folder = hf_folder(vit_sd, tmp_path / 'src', 'sharded-bin')
    marker = tmp_path / 'PWNED'
    index = json.loads((folder / 'pytorch_model.bin.index.json').read_text())
    last = sorted(set(index['weight_map'].values()))[-1]
    part = torch.load(str(folder / last), weights_only=True)
    part[next(iter(part))] = _Payload(marker)
    torch.save(part, str(folder / last))
    dst = tmp_path / 'out.pth'
    assert main(['convert', str(folder), str(dst)]) == 4
    assert last in _one_error_line(capsys.readouterr().err)
    with pytest.raises(UnsafeCheckpointError):
        load_source(str(folder))
    assert not marker.exists() and not dst.exists()
