"""The Ray engine: the same collection job on Ray Data, on one machine or a cluster.

``--engine ray`` makes the inputs a Ray dataset and runs `map_batches` with a pool of actors,
each loading the model once (one GPU per actor when the cluster has GPUs, else one CPU per
actor). Actors run the very code of the local engine (`stream_features`, `Job.write`), so the
pictures are the same; they write their outputs themselves (the output folder must be
shared by the workers: a local disk for a local cluster, a network filesystem for a real
one) and hand back one small record per input, from which the driver writes the same
``manifest.jsonl``. `extract` writes features as Parquet shards, one per batch
(``OUT/features/part-*.parquet``; read them back with :func:`load_feature_shard`).

The collection PCA basis is a distributed covariance reduction: each batch returns its
`Moments` (count, mean, centred scatter, float64) and the driver merges them as they stream
in; a second map gives the projection range the same way.

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
import pickle
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

from .collections import (
    BasisMismatch,
    Item,
    Job,
    Summary,
    _ManifestWriter,
    complete,
    failed_record,
    read_manifest,
    resumed_basis,
    stream_features,
)
from .errors import DinoscopeError, InputError, ModelError

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
    """One actor: loads the model once, then runs one phase of the job on each batch of inputs."""

    def __init__(self, settings: dict, cache: tuple | None, job: Job, out: str, phase: str, threads: int):
        import torch

        from .cache import FeatureCache
        from .features import Extractor

        if threads:
            torch.set_num_threads(threads)  # this worker process's own pool: one per CPU Ray gave the actor
        self.extractor = Extractor(**settings, cache=FeatureCache(cache[0], max_bytes=cache[1]) if cache else None)
        self.extractor.backbone  # load the model now, once per actor
        self.job, self.out, self.phase = job, Path(out), phase

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from .streaming import Moments, Range

        items = [Item(str(s), str(n)) for s, n in zip(batch["source"], batch["name"])]
        records: dict[str, dict] = {}
        state: object = None

        def on_error(item: Item, message: str) -> None:
            records[item.name] = failed_record(item, message)

        if self.phase == "fit":
            moments = Moments()
            for item, _, feats in stream_features(self.extractor, items, on_error):
                moments.update(feats.flat)
                records[item.name] = {"name": item.name, "status": "ok"}
            state = moments.state()
        elif self.phase == "range":
            span = Range()
            for item, _, feats in stream_features(self.extractor, items, on_error):
                span.update(self.job.basis, feats.flat)
                records[item.name] = {"name": item.name, "status": "ok"}
            state = span.state()
        elif self.job.kind == "extract":
            done = list(stream_features(self.extractor, items, on_error))
            if done:
                shard = _shard_name([it.name for it, _, _ in done])
                _write_shard(self.out / shard, done)
                for row, (item, image, feats) in enumerate(done):
                    records[item.name] = _ok(item, [shard], feats, image, row=row)
        else:
            for item, image, feats in stream_features(self.extractor, items, on_error):
                try:
                    records[item.name] = _ok(item, self.job.write(self.out, item.name, image, feats), feats, image)
                except BasisMismatch:
                    raise  # every input would fail: the driver stops the run with this one line
                except DinoscopeError as exc:
                    on_error(item, str(exc))
        rows = [records.get(it.name) or failed_record(it, "no result from the worker") for it in items]
        blob = [pickle.dumps(state) if i == 0 and state is not None else b"" for i in range(len(rows))]
        return {"name": np.array([it.name for it in items], dtype=object),
                "record": np.array([json.dumps(r) for r in rows], dtype=object),
                "state": np.array(blob, dtype=object)}


def _ok(item: Item, outputs: list[str], features, image, row: int | None = None) -> dict:
    from .collections import ok_record

    record = ok_record(item, outputs, features, image)
    if row is not None:
        record["row"] = row
    return record


def _shard_name(names: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
    return f"{SHARDS}/part-{digest}.parquet"


def _write_shard(path: Path, done) -> None:
    """One Parquet file per batch: a row per image with its tokens as float32 bytes and its geometry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .files import atomic_path

    columns: dict[str, list] = {k: [] for k in ("name", "source", "rows", "cols", "dim", "registers", "cls",
                                                "register_tokens", "patches", "metadata")}
    for item, _, f in done:
        columns["name"].append(item.name)
        columns["source"].append(item.source)
        columns["rows"].append(f.patches.shape[0])
        columns["cols"].append(f.patches.shape[1])
        columns["dim"].append(f.dim)
        columns["registers"].append(f.registers.shape[0])
        columns["cls"].append(f.cls.float().contiguous().numpy().tobytes())
        columns["register_tokens"].append(f.registers.float().contiguous().numpy().tobytes())
        columns["patches"].append(f.patches.float().contiguous().numpy().tobytes())
        columns["metadata"].append(json.dumps(f.metadata()))
    table = pa.table(columns)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def load_feature_shard(path) -> dict:
    """{input name: Features} from one Parquet shard written by the Ray engine."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from .features import Features
    from .geometry import Geometry

    table = pq.read_table(os.fspath(path)).to_pylist()
    found = {}
    for r in table:
        d = r["dim"]
        meta = json.loads(r["metadata"])
        tensor = lambda b, shape: torch.from_numpy(np.frombuffer(b, dtype=np.float32).copy().reshape(shape))  # noqa: E731
        found[r["name"]] = Features(
            tensor(r["cls"], (d,)), tensor(r["register_tokens"], (r["registers"], d)),
            tensor(r["patches"], (r["rows"], r["cols"], d)), Geometry.from_json(meta["geometry"]),
            model=meta.get("model", ""), revision=meta.get("revision", ""), dtype=meta.get("dtype", "float32"),
            layer=int(meta.get("layer", -1)), normed=meta.get("normed", "true") == "true",
            extra=json.loads(meta.get("extra", "{}")))
    return found


def _settings(extractor) -> dict:
    source = extractor.model_source
    if not isinstance(source, (str, os.PathLike)):
        raise InputError("the Ray engine needs the model as a name or folder it can load on each worker, "
                         "not a loaded model object")
    if isinstance(source, os.PathLike) or os.path.exists(os.fspath(source)):
        source = os.path.abspath(os.fspath(source))
    return dict(model=source, device=extractor.device, dtype=extractor.dtype, resolution=extractor.resolution,
                layer=extractor.layer, normed=extractor.normed, max_pixels=extractor.max_pixels,
                batch_size=extractor.batch_size)


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


def run_on_ray(items: Sequence[Item], extractor, job: Job, out, *, resume: bool = False, basis_path=None,
               progress=None, num_cpus: int | None = None) -> Summary:
    """`run_collection` on Ray Data: same outputs, same manifest; see the module docstring."""
    from .streaming import Moments, Range

    require_ray()
    out = Path(out).resolve()
    started = time.perf_counter()
    settings = _settings(extractor)
    if job.kind == "extract":
        job.options = {**job.options, "format": "parquet"}
    previous = read_manifest(out) if resume else {}
    manifest = _ManifestWriter(out, items, previous)
    manifest.flush()
    summary = Summary(total=len(items), manifest=os.fspath(out / "manifest.jsonl"))
    todo = [it for it in items if not (resume and complete(out, it, job, previous.get(it.name)))]
    summary.skipped = len(items) - len(todo)
    scratch = None
    if extractor.cache is not None:
        cache = (os.fspath(Path(extractor.cache.folder).resolve()), extractor.cache.max_bytes)
    elif job.needs_basis and job.basis is None:
        scratch = tempfile.TemporaryDirectory(prefix=".dinoscope-scratch-", dir=out)
        cache = (scratch.name, 1 << 62)
    else:
        cache = None
    failed: set[str] = set()
    try:
        with ray_session(num_cpus) as ray:
            resources = ray.cluster_resources()
            gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
            if gpus:
                pool, per_actor, threads = gpus, {"num_gpus": 1}, 0
            else:
                pool, per_actor, threads = cpus, {"num_cpus": 1}, 1

            def phase(name: str, chosen: Sequence[Item]):
                import ray.data

                if not chosen:
                    return
                ds = ray.data.from_items([{"source": it.source, "name": it.name} for it in chosen])
                kwargs = dict(fn_constructor_kwargs=dict(settings=settings, cache=cache, job=job, out=os.fspath(out),
                                                         phase=name, threads=threads),
                              compute=ray.data.ActorPoolStrategy(size=min(pool, len(chosen))),
                              batch_size=max(1, min(extractor.batch_size, -(-len(chosen) // pool))),
                              batch_format="numpy", **per_actor)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # max_restarts goes through the deprecated **ray_remote_args
                    try:
                        mapped = ds.map_batches(_Worker, max_restarts=0, **kwargs)  # a dying worker fails the run
                    except TypeError:
                        mapped = ds.map_batches(_Worker, **kwargs)
                done = 0
                try:
                    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
                        records = [json.loads(r) for r in batch["record"]]
                        states = [pickle.loads(b) for b in batch["state"] if len(b)]
                        done += len(records)
                        if progress:
                            progress({"fit": "fitting PCA (ray)", "range": "PCA colour range (ray)"}.get(
                                name, "writing (ray)"), done, len(chosen))
                        yield records, states
                except DinoscopeError:
                    raise
                except Exception as exc:  # Ray's own wrappers of worker failures
                    _reraise(exc)

            if job.needs_basis and job.basis is None and todo:
                target, job.basis = resumed_basis(job, out, basis_path, resume)
                if job.basis is None:
                    moments = Moments()
                    for records, states in phase("fit", items):
                        for r in records:
                            if r["status"] != "ok" and r["name"] not in failed:
                                failed.add(r["name"])
                                manifest.add(r)
                        for s in states:
                            moments.merge(Moments.from_state(s))
                    basis = moments.basis(job.n_components)
                    job.basis = basis  # workers of the next phase project on it
                    span = Range()
                    for _, states in phase("range", [it for it in items if it.name not in failed]):
                        for s in states:
                            span.merge(Range.from_state(s))
                    job.basis = span.apply(basis)
                    job.basis.save(target)
                summary.basis_path = os.fspath(target)
            for records, _ in phase("write", [it for it in todo if it.name not in failed]):
                for r in records:
                    manifest.add(r)
    finally:
        manifest.flush()
        if scratch is not None:
            scratch.cleanup()
    records = manifest.records.values()
    summary.failures = [(r["source"], r.get("error", "")) for r in records if r.get("status") != "ok"]
    summary.failed = len(summary.failures)
    summary.ok = sum(1 for r in records if r.get("status") == "ok")
    summary.seconds = time.perf_counter() - started
    return summary
