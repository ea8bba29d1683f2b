"""The Ray engine: the same collection job on Ray Data, on one machine or a cluster.

``--engine ray`` is the `RayEngine` of the one collection runner (:func:`dinoscope.collections.run_collection`):
the runner keeps the manifest, resume, basis and summary; the engine starts one pool of actors for
the whole run, each loading the model once (one GPU per actor when the cluster has GPUs, else one
CPU per actor), and hands them batches of inputs for every pass (the two PCA passes and the
writing pass). Actors run the very code of the local engine (`collections.process`), so the
pictures are the same; they write their outputs themselves (the output folder must be shared by
the workers: a local disk for a local cluster, a network filesystem for a real one) and hand back
one small record per input, from which the driver appends the same ``manifest.jsonl``.

`extract` writes features as Parquet shards, one per batch (``OUT/features/part-*.parquet``) with
typed columns that pandas, Polars, DuckDB, pyarrow and Ray Data read as they are (schema in
docs/collections.md; :func:`load_feature_shard` gives Features back).

The collection PCA basis is a distributed reduction: each batch fills a fresh `StreamingPCA`
and returns its state (count, mean, centred scatter, float64), which the driver merges as they
stream in; the second pass gives the projection range the same way.

``RAY_ADDRESS`` points at a running cluster (dinoscope is shipped to it with the job's
runtime environment); without it a local cluster is started for the run (as many CPUs as
this machine has, no dashboard, a short temporary folder, token auth off) and shut down at
the end. Ray is optional: ``pip install "dinoscope[ray]"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .analyses.streaming import StreamingPCA
from .cache import FeatureCache, LayeredCache
from .collections import Item, Summary, process, run_collection
from .errors import DinoscopeError, InputError, ModelError, redact
from .features import Extractor, Features
from .files import SCRATCH_PREFIX, atomic_path
from .geometry import Geometry
from .jobs import ExtractJob, Job

INSTALL = 'pip install "dinoscope[ray]"'
SHARDS = "features"


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--engine ray needs Ray Data, which is not installed; {INSTALL}") from None
    return ray


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None):
    """Connect to RAY_ADDRESS, or start a local cluster for the block and shut it down after."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    package = Path(__file__).resolve().parent
    address = os.environ.get("RAY_ADDRESS", "").strip()
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    temp = None
    saved_auth = os.environ.get("RAY_AUTH_MODE")
    try:
        if address:
            try:
                ray.init(address=address, runtime_env={"py_modules": [os.fspath(package)]}, **quiet)
            except Exception as exc:  # ConnectionError, TimeoutError, ValueError, RuntimeError... from Ray
                raise InputError(f"cannot reach the Ray cluster at {address} ({_first_line(exc)}); check RAY_ADDRESS "
                                 "or unset it to start a local one") from exc
        else:
            os.environ["RAY_AUTH_MODE"] = "disabled"  # else Ray writes a token under the home folder
            temp = tempfile.mkdtemp(prefix="dsray", dir="/tmp" if os.path.isdir("/tmp") else None)  # short: socket paths
            python_path = os.pathsep.join(filter(None, [os.fspath(package.parent), os.environ.get("PYTHONPATH")]))
            try:
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, _temp_dir=temp,
                         runtime_env={"env_vars": {"PYTHONPATH": python_path}}, **quiet)
            except Exception as exc:
                raise InputError(f"cannot start a local Ray cluster ({_first_line(exc)}); check that Ray works here "
                                 "(ray start --head) or use --engine local") from exc
        loggers = [logging.getLogger(n) for n in ("ray", "ray.data")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)  # Ray Data's execution notices and its "progress bars disabled" warning
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # dinoscope draws its own bar
        with contextlib.suppress(AttributeError):
            context.print_on_execution_start = False
        try:
            yield ray
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if saved_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class _Worker:
    """One actor for the whole run: loads the model once, then runs `process` on each batch it is given."""

    def __init__(self, settings: dict, caches: tuple, out: str, threads: int):
        if threads:
            torch.set_num_threads(threads)  # this worker process's own pool: one per CPU Ray gave the actor
        user, max_bytes, scratch = caches
        cache = FeatureCache(user, max_bytes=max_bytes) if user else None
        if scratch:
            cache = LayeredCache(FeatureCache(scratch, max_bytes=1 << 62), cache)
        self.extractor = Extractor(**settings, cache=cache)
        self.extractor.backbone  # noqa: B018 - load the model now, once per actor
        self.out = Path(out)

    def run(self, job: Job, sources: list, names: list, accumulator: StreamingPCA | None, made: dict | None):
        """(records, accumulator state or None) for one batch."""
        items = [Item(s, n) for s, n in zip(sources, names)]
        acc = accumulator.spawn() if accumulator is not None else None
        records = list(process(self.extractor, job, self.out, items, accumulator=acc, made=made))
        return records, None if acc is None else acc.state()


# --------------------------------------------------------------------------- feature shards


class ShardJob(ExtractJob):
    """`extract` on Ray: one Parquet shard per batch instead of one file per image."""

    batched = True

    def outputs(self, name: str) -> None:
        return None  # the shard's name is known once its batch is written

    def write_batch(self, out: Path, done) -> list[list[str]]:
        if not done:
            return []
        shard = _shard_name([item.name for item, _, _ in done])
        with atomic_path(out / shard) as tmp:
            pq.write_table(shard_table(done), tmp)
        return [[shard]] * len(done)


def _shard_name(names: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
    return f"{SHARDS}/part-{digest}.parquet"


def _floats(tensors) -> pa.Array:
    """A list<float32> column: each row one tensor flattened in row-major (C) order."""
    flat = [t.detach().float().contiguous().reshape(-1).numpy() for t in tensors]
    offsets = np.zeros(len(flat) + 1, dtype=np.int32)
    np.cumsum([len(f) for f in flat], out=offsets[1:])
    values = np.concatenate(flat) if flat else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.float32()))


SHARD_SCHEMA = pa.schema([("name", pa.string()), ("source", pa.string()), ("rows", pa.int32()), ("cols", pa.int32()),
                          ("dim", pa.int32()), ("registers", pa.int32()), ("cls", pa.list_(pa.float32())),
                          ("register_tokens", pa.list_(pa.float32())), ("patches", pa.list_(pa.float32())),
                          ("metadata", pa.string())])


def shard_table(done) -> pa.Table:
    """One row per image: its tokens as float32 lists (patches flattened rows x cols x dim) and their shapes."""
    feats = [f for _, _, f in done]
    ints = lambda values: pa.array(values, type=pa.int32())  # noqa: E731
    return pa.Table.from_arrays([
        pa.array([item.name for item, _, _ in done]), pa.array([redact(item.source) for item, _, _ in done]),
        ints([f.patches.shape[0] for f in feats]), ints([f.patches.shape[1] for f in feats]),
        ints([f.dim for f in feats]), ints([f.registers.shape[0] for f in feats]),
        _floats([f.cls for f in feats]), _floats([f.registers for f in feats]), _floats([f.patches for f in feats]),
        pa.array([json.dumps(f.metadata()) for f in feats])], schema=SHARD_SCHEMA)


def load_feature_shard(path) -> dict:
    """{input name: Features} from one Parquet shard written by the Ray engine."""
    found = {}
    for r in pq.read_table(os.fspath(path)).to_pylist():
        d = r["dim"]
        meta = json.loads(r["metadata"])
        tensor = lambda values, shape: torch.tensor(values, dtype=torch.float32).reshape(shape)  # noqa: E731
        found[r["name"]] = Features(
            tensor(r["cls"], (d,)), tensor(r["register_tokens"], (r["registers"], d)),
            tensor(r["patches"], (r["rows"], r["cols"], d)), Geometry.from_json(meta["geometry"]),
            model=meta.get("model", ""), revision=meta.get("revision", ""), dtype=meta.get("dtype", "float32"),
            layer=int(meta.get("layer", -1)), normed=meta.get("normed", "true") == "true",
            extra=json.loads(meta.get("extra", "{}")))
    return found


# --------------------------------------------------------------------------- the engine


def _settings(extractor) -> dict:
    source = extractor.model_source
    if not isinstance(source, (str, os.PathLike)):
        raise InputError("the Ray engine needs the model as a name or folder it can load on each worker, "
                         "not a loaded model object")
    if isinstance(source, os.PathLike) or os.path.exists(os.fspath(source)):
        source = os.path.abspath(os.fspath(source))
    return dict(model=source, device=extractor.device, dtype=extractor.dtype, resolution=extractor.resolution,
                layer=extractor.layer, normed=extractor.normed, max_pixels=extractor.max_pixels,
                batch_size=extractor.batch_size, density=extractor.sampling.density, tiles=extractor.sampling.tiles)


def _reraise(exc: BaseException):
    """Ray wraps worker exceptions; give the user the one-line dinoscope error inside, if there is one."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DinoscopeError):
            raise type(e)(str(e)) from None
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    lines = [line for line in str(exc).splitlines() if line.strip()]
    raise ModelError(f"the Ray job failed: {lines[-1] if lines else type(exc).__name__}; rerun with --debug for "
                     "details") from exc


class RayEngine:
    """The collection runner's engine on Ray: one actor pool for the run, batches for every pass."""

    name = "ray"

    def __init__(self, num_cpus: int | None = None):
        self.num_cpus = num_cpus
        self.forward_passes = 0
        self._pool = self._ray = None
        self.batch_size = 1

    def adapt(self, job: Job) -> Job:
        """`extract` writes Parquet shards on Ray."""
        return ShardJob(options=job.options) if type(job) is ExtractJob else job

    @contextlib.contextmanager
    def session(self, extractor, out: Path, job: Job, scratch: bool):
        settings = _settings(extractor)
        folder = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=out) if scratch else None
        user = extractor.cache if isinstance(extractor.cache, FeatureCache) else None
        caches = (os.fspath(user.folder.resolve()), user.max_bytes, folder) if user else (None, 0, folder)
        try:
            with ray_session(self.num_cpus) as ray:
                self._ray, self.batch_size = ray, extractor.batch_size
                self._start(ray, settings, caches, out)
                yield self
        finally:
            self._pool = None
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def _start(self, ray, settings: dict, caches: tuple, out: Path) -> None:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        size, per_actor, threads = (gpus, {"num_gpus": 1}, 0) if gpus else (cpus, {"num_cpus": 1}, 1)
        actor = ray.remote(max_restarts=0, **per_actor)(_Worker)  # a dying worker fails the run
        self._pool = [actor.remote(settings, caches, os.fspath(out), threads) for _ in range(size)]

    def map(self, items: Sequence[Item], job: Job, accumulator: StreamingPCA | None = None,
            made: dict | None = None) -> Iterator[dict]:
        """Records as batches complete (any order); accumulator states are merged into `accumulator`."""
        from ray.util import ActorPool

        if not items:
            return
        batch = max(1, min(self.batch_size, -(-len(items) // len(self._pool))))
        batches = [items[i:i + batch] for i in range(0, len(items), batch)]
        job_ref = self._ray.put(job)
        pool = ActorPool(self._pool[:len(batches)])
        work = lambda actor, chunk: actor.run.remote(  # noqa: E731
            job_ref, [it.source for it in chunk], [it.name for it in chunk], accumulator, made)
        try:
            for records, state in pool.map_unordered(work, batches):
                if state is not None:
                    accumulator.merge(state)
                yield from records
        except DinoscopeError:
            raise
        except Exception as exc:  # Ray's own wrappers of worker failures
            _reraise(exc)


def run_on_ray(items: Sequence[Item], extractor, job: Job, out, *, resume: bool = False, basis_path=None,
               progress=None, num_cpus: int | None = None) -> Summary:
    """`run_collection` on the Ray engine: same outputs, same manifest; see the module docstring."""
    require_ray()
    return run_collection(items, extractor, job, Path(out).resolve(), resume=resume, basis_path=basis_path,
                          progress=progress, engine=RayEngine(num_cpus))
