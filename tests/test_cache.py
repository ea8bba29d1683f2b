"""The on-disk feature cache: hits skip the model, keys cover every setting, damage is survived."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import DEFAULT_ID, FAKE_COMMIT, SRC, cli_env, run_cli

from dinoscope.cache import CacheKey, FeatureCache, default_cache_dir, parse_size
from dinoscope.features import Extractor, Features
from dinoscope.geometry import Geometry, Resolution


def _features(rows=3, cols=4, dim=8, seed=0) -> Features:
    g = torch.Generator().manual_seed(seed)
    geometry = Geometry(16, rows, cols, (cols * 16, rows * 16), (cols * 16, rows * 16), False)
    return Features(torch.randn(dim, generator=g), torch.randn(2, dim, generator=g),
                    torch.randn(rows, cols, dim, generator=g), geometry, model="m", revision="r")


def _key(**changes) -> CacheKey:
    base = dict(model="m", revision="r", patch_size=16, image="ab" * 32, resolution="native", max_tokens=16384,
                layer=-1, normed=True, dtype="float32")
    return CacheKey(**{**base, **changes})


def _no_load(monkeypatch):
    """Make loading any model fail, so a result can only have come from the cache."""
    import dinoscope.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded on a cache hit")

    monkeypatch.setattr(dinoscope.models, "load_model", refuse)


def test_hit_returns_identical_tensors_without_loading_the_model(tiny_model_dir, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "c")
    first = Extractor(tiny_model_dir, device="cpu", cache=cache)
    _, computed = first("sample:chelsea")
    assert first.forward_passes == 1 and cache.misses == 1

    _no_load(monkeypatch)
    second = Extractor(tiny_model_dir, device="cpu", cache=FeatureCache(tmp_path / "c"))
    image, cached = second("sample:chelsea")
    assert second.forward_passes == 0 and second._backbone is None and second.cache.hits == 1
    assert image.size == (451, 300)
    for name in ("cls", "registers", "patches"):
        assert torch.equal(getattr(cached, name), getattr(computed, name))
    assert cached.geometry == computed.geometry
    assert (cached.revision, cached.layer, cached.normed) == (computed.revision, computed.layer, computed.normed)
    assert "cache_key" not in cached.extra


def test_hub_id_hits_without_loading_and_keys_on_the_snapshot_commit(offline_hub, tmp_path, monkeypatch):
    from dinoscope.models.loading import identify

    assert identify(DEFAULT_ID) == (FAKE_COMMIT, 16)
    assert identify("nobody/not-downloaded") is None
    cache = FeatureCache(tmp_path / "c")
    resolution = Resolution("short", 64)
    _, computed = Extractor(DEFAULT_ID, device="cpu", cache=cache, resolution=resolution)("sample:coffee")
    _no_load(monkeypatch)
    again = Extractor(DEFAULT_ID, device="cpu", cache=cache, resolution=resolution)
    _, cached = again("sample:coffee")
    assert again.forward_passes == 0 and torch.equal(cached.patches, computed.patches)
    assert cached.revision == FAKE_COMMIT


def test_every_key_part_changes_the_key():
    base = _key()
    changes = dict(model="other", revision="r2", patch_size=14, image="cd" * 32, resolution="short:768",
                   max_tokens=None, layer=5, normed=False, dtype="bfloat16",
                   sampling="density=2;pad=replicate;tiles=no")
    digests = {base.digest}
    for field in dataclasses.fields(CacheKey):
        digests.add(dataclasses.replace(base, **{field.name: changes[field.name]}).digest)
    assert len(digests) == len(changes) + 1
    assert _key().digest == base.digest  # and it is stable


@pytest.mark.slow
def test_changed_settings_miss_and_same_settings_hit(tiny_model_dir, tmp_path):
    cache = FeatureCache(tmp_path / "c")
    Extractor(tiny_model_dir, device="cpu", cache=cache)("sample:chelsea")
    for kwargs in (dict(layer=0), dict(normed=False), dict(resolution=Resolution("short", 64)),
                   dict(resolution=Resolution("native", max_tokens=100))):
        ex = Extractor(tiny_model_dir, device="cpu", cache=cache, **kwargs)
        ex("sample:chelsea")
        assert ex.forward_passes == 1, kwargs
    same = Extractor(tiny_model_dir, device="cpu", cache=cache)
    same("sample:chelsea")
    same("sample:coffee")  # a different image misses
    assert same.forward_passes == 1


def test_changed_weights_miss(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    cache = FeatureCache(tmp_path / "c")
    Extractor(folder, device="cpu", cache=cache)("sample:chelsea")
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten weights
    ex = Extractor(folder, device="cpu", cache=cache)
    ex("sample:chelsea")
    assert ex.forward_passes == 1


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other_key"])
def test_corrupt_entry_is_recomputed(tiny_model_dir, tmp_path, damage):
    cache = FeatureCache(tmp_path / "c")
    ex = Extractor(tiny_model_dir, device="cpu", cache=cache)
    image, computed = ex("sample:chelsea")
    path = cache.path(ex.cache_key(image))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff" * 500)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a whole, valid entry stored under the wrong name
        _features().save(path)
    again = Extractor(tiny_model_dir, device="cpu", cache=FeatureCache(tmp_path / "c"))
    _, recomputed = again("sample:chelsea")
    assert again.forward_passes == 1
    assert torch.equal(recomputed.patches, computed.patches)
    assert torch.equal(Features.load(path).patches, computed.patches)  # the entry was rewritten whole


@pytest.mark.slow
def test_two_processes_writing_one_entry_leave_a_valid_file(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SRC)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_cache import _features, _key
        from dinoscope.cache import FeatureCache
        cache = FeatureCache(sys.argv[1])
        for i in range(40):
            assert cache.put(_key(), _features(rows=40, cols=40, dim=64)) is not None
        print("ok")
    """)
    env = cli_env()
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "c")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err
    cache = FeatureCache(tmp_path / "c")
    got = cache.get(_key())
    assert got is not None and torch.equal(got.patches, _features(rows=40, cols=40, dim=64).patches)
    leftovers = [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert leftovers == [cache.path(_key()).name]


def test_size_bound_evicts_least_recently_used(tmp_path):
    one = _features(rows=20, cols=20, dim=32)
    probe = FeatureCache(tmp_path / "probe")
    entry = probe.path(probe.put(_key(), one).name.removesuffix(".safetensors")).stat().st_size
    cache = FeatureCache(tmp_path / "c", max_bytes=int(entry * 2.5))
    keys = [_key(layer=i) for i in range(3)]
    for i, key in enumerate(keys[:2]):
        cache.put(key, one)
        os.utime(cache.path(key), (1_000_000 + i, 1_000_000 + i))
    assert cache.get(keys[0]) is not None  # a hit makes keys[0] the most recently used
    cache.put(keys[2], one)
    assert cache.size() <= cache.max_bytes
    assert cache.get(keys[1]) is None  # the least recently used went
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None


def test_zero_size_keeps_nothing_and_unwritable_folder_is_not_fatal(tiny_model_dir, tmp_path, caplog):
    cache = FeatureCache(tmp_path / "c", max_bytes=0)
    assert cache.put(_key(), _features()) is None and not (tmp_path / "c").exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ex = Extractor(tiny_model_dir, device="cpu", cache=FeatureCache(blocker / "c"))
    _, feats = ex("sample:chelsea")  # extraction works, the cache steps aside with a notice
    assert feats.patches.shape[:2] == (18, 28)
    assert "cannot be written" in caplog.text


def test_default_folder_and_sizes(monkeypatch, tmp_path):
    monkeypatch.delenv("DINOSCOPE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dinoscope"
    monkeypatch.setenv("DINOSCOPE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DINOSCOPE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "dinoscope"
    assert parse_size("2G") == 2 * 1024**3 and parse_size("500M") == 500 * 1024**2 and parse_size("1.5k") == 1536
    monkeypatch.setenv("DINOSCOPE_CACHE_SIZE", "3M")
    assert FeatureCache(tmp_path).max_bytes == 3 * 1024**2
    from dinoscope.errors import InputError

    with pytest.raises(InputError, match="cache size"):
        parse_size("lots")


@pytest.mark.slow
def test_cli_uses_the_cache_dir_and_no_cache_writes_nothing(tiny_model_dir, tmp_path):
    base = ["norms", "sample:chelsea", "-m", str(tiny_model_dir), "-o", str(tmp_path / "out")]
    r = run_cli(*base, "--no-cache", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "c").exists()
    picture = (tmp_path / "out" / "chelsea_norms.png").read_bytes()
    r = run_cli(*base, "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "c").rglob("*.safetensors"))) == 1
    r = run_cli(*base, "--cache-dir", str(tmp_path / "c"))  # served from the cache: the same picture
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "chelsea_norms.png").read_bytes() == picture
    r = run_cli(*base, env=cli_env(DINOSCOPE_CACHE=str(tmp_path / "env")))
    assert r.returncode == 0 and len(list((tmp_path / "env").rglob("*.safetensors"))) == 1
    r = run_cli(*base, env=cli_env(DINOSCOPE_CACHE="off", XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert r.returncode == 0 and not (tmp_path / "xdg").exists()


# ------------------------------------------------------------------------------------------------
# the memory and layered caches (same protocol as the disk cache)


def test_memory_cache_is_a_bounded_lru_of_copies():
    from dinoscope.cache import MemoryCache

    cache = MemoryCache(max_entries=2)
    a, b, c = _features(seed=1), _features(seed=2), _features(seed=3)
    a.image = object()
    assert cache.get(_key(layer=1)) is None and cache.misses == 1
    cache.put(_key(layer=1), a)
    cache.put(_key(layer=2), b)
    hit = cache.get(_key(layer=1))  # now the most recently used: b is evicted next
    assert hit is not a and hit.image is None and torch.equal(hit.patches, a.patches)
    hit.image, hit.extra["note"] = "mine", 1  # a caller's changes stay with the caller
    assert cache.get(_key(layer=1)).image is None and "note" not in cache.get(_key(layer=1)).extra
    cache.put(_key(layer=3), c)
    assert len(cache) == 2 and cache.get(_key(layer=2)) is None
    assert torch.equal(cache.get(_key(layer=3)).cls, c.cls) and cache.get(_key(layer=1)) is not None
    assert cache.hits == 5
    nothing = MemoryCache(max_entries=0)
    nothing.put(_key(), a)
    assert nothing.get(_key()) is None


def test_layered_cache_reads_front_first_fills_it_from_the_back_and_writes_both(tmp_path):
    from dinoscope.cache import LayeredCache, MemoryCache

    front, back = MemoryCache(), FeatureCache(tmp_path / "disk")
    layered = LayeredCache(front, back)
    f = _features(seed=4)
    back.put(_key(layer=7), f)  # e.g. written by an earlier process
    assert front.get(_key(layer=7)) is None
    hit = layered.get(_key(layer=7))
    assert torch.equal(hit.patches, f.patches) and back.hits == 1
    again = layered.get(_key(layer=7))  # now served by the front
    assert torch.equal(again.patches, f.patches) and back.hits == 1 and front.hits == 1
    assert layered.hits == 2
    g = _features(seed=5)
    layered.put(_key(layer=8), g)
    assert torch.equal(front.get(_key(layer=8)).cls, g.cls) and torch.equal(back.get(_key(layer=8)).cls, g.cls)
    assert layered.get(_key(layer=9)) is None
    alone = LayeredCache(MemoryCache())  # no back cache: the front alone
    alone.put(_key(), g)
    assert torch.equal(alone.get(_key()).cls, g.cls)


def test_extractor_with_a_memory_cache_runs_the_model_once_and_attaches_the_image(tiny_model_dir):
    from dinoscope.cache import LayeredCache, MemoryCache

    memory = MemoryCache()
    ex = Extractor(str(tiny_model_dir), device="cpu", resolution="short:64", cache=LayeredCache(memory, None))
    first = ex.features("sample:chelsea")
    second = ex.features("sample:chelsea")
    assert ex.forward_passes == 1 and memory.hits == 1
    assert torch.equal(first.patches, second.patches)
    assert second.image is not None and second.image.size == (451, 300) and first.image.size == (451, 300)


def test_scratch_layer_is_private_and_removed(tmp_path):
    from dinoscope.cache import MemoryCache, scratch_layer

    back = MemoryCache()
    with scratch_layer(tmp_path / "run", back) as layered:
        layered.put(_key(), _features())
        assert back.get(_key()) is not None
        scratch = layered.front.folder
        assert scratch.is_dir() and any(scratch.rglob("*.safetensors"))
    assert not scratch.exists()


# ------------------------------------------------------------------------------------------------
# integrity: checksums of the tensor data, and a full cache disk


def _tensor_region(path: Path) -> tuple[int, dict]:
    import json

    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    return 8 + size, {k: v["data_offsets"] for k, v in header.items() if k != "__metadata__"}


@pytest.mark.parametrize("tensor", ["cls", "registers", "patches"])
def test_damaged_tensor_bytes_are_dropped_with_a_notice(tensor, tmp_path, caplog):
    cache = FeatureCache(tmp_path / "c")
    feats = _features()
    path = cache.put(_key(), feats)
    assert torch.equal(cache.get(_key()).patches, feats.patches)  # intact: a hit
    base, offsets = _tensor_region(path)
    start, end = offsets[tensor]
    data = bytearray(path.read_bytes())
    data[base + (start + end) // 2] ^= 0x40  # one flipped bit inside the tensor: still a valid file
    path.write_bytes(bytes(data))
    assert Features.load(path).patches.shape == feats.patches.shape  # the file itself still reads
    assert cache.get(_key()) is None
    assert "damaged" in caplog.text and not path.exists()


def test_damaged_entry_is_recomputed_by_the_extractor(tiny_model_dir, tmp_path, caplog):
    cache = FeatureCache(tmp_path / "c")
    ex = Extractor(tiny_model_dir, device="cpu", cache=cache)
    image, computed = ex("sample:chelsea")
    path = cache.path(ex.cache_key(image))
    base, offsets = _tensor_region(path)
    data = bytearray(path.read_bytes())
    start, end = offsets["patches"]
    data[base + start:base + start + 64] = bytes(64)  # a zeroed run, as a bad sector would leave
    path.write_bytes(bytes(data))
    again = Extractor(tiny_model_dir, device="cpu", cache=FeatureCache(tmp_path / "c"))
    _, recomputed = again("sample:chelsea")
    assert again.forward_passes == 1 and torch.equal(recomputed.patches, computed.patches)
    assert "damaged" in caplog.text
    third = Extractor(tiny_model_dir, device="cpu", cache=FeatureCache(tmp_path / "c"))
    third("sample:chelsea")
    assert third.forward_passes == 0  # the rewritten entry is whole again


def _small_tmpfs(folder: Path) -> Path:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the injected ENOSPC test covers this")
    return folder


def test_full_cache_disk_never_fails_a_run(tiny_model_dir, tmp_path, caplog):
    small = _small_tmpfs(tmp_path / "small")
    try:
        ex = Extractor(tiny_model_dir, device="cpu", cache=FeatureCache(small / "c"))
        _, feats = ex("sample:chelsea")  # the entry (~300 kB) cannot fit in 64 kB
        assert feats.patches.shape[:2] == (18, 28)
        assert "cannot be written" in caplog.text and "no space" in caplog.text.lower()
        assert not any(p.is_file() for p in small.rglob("*"))  # no half-written entry or temporary file
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_injected_full_disk_on_put_is_a_notice(tiny_model_dir, tmp_path, caplog, monkeypatch):
    import errno

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    cache = FeatureCache(tmp_path / "c")
    assert cache.put(_key(), _features()) is None
    assert "cannot be written" in caplog.text and "no space" in caplog.text.lower()
    assert not any(p.is_file() for p in (tmp_path / "c").rglob("*"))


@pytest.mark.parametrize("kind", ["random", "file"])
def test_second_extractor_hits_the_cache_without_loading_the_model(kind, tiny_model_dir, tmp_path):
    """random: models are known by name and seed, single weights files by a cheap fingerprint: no load to read the cache."""
    import torch

    from dinoscope.features import Extractor

    source = "random:vits16" if kind == "random" else str(next(Path(tiny_model_dir).glob("*.safetensors")))
    cache = FeatureCache(tmp_path / "c")
    first = Extractor(source, device="cpu", cache=cache)
    _, made = first("sample:chelsea")
    assert first.forward_passes == 1
    second = Extractor(source, device="cpu", cache=FeatureCache(tmp_path / "c"))
    _, again = second("sample:chelsea")
    assert second.forward_passes == 0 and second._backbone is None  # the model was never loaded
    assert torch.equal(made.patches, again.patches)


def test_file_fingerprint_changes_with_the_file(tmp_path):
    from dinoscope.models.loading import _fingerprint_file

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 200_000)
    before = _fingerprint_file(weights)
    stat = weights.stat()
    with weights.open("r+b") as f:  # same size and time, different tail
        f.seek(199_000)
        f.write(b"b")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _fingerprint_file(weights) != before
