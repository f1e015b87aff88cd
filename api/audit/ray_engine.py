"""The audit's Ray Data engine: the same `score_batch`, on an actor pool, with the same rows.

Files of a folder are read by Ray (`read_binary_files`), archive members and unreadable files come
from the driver (`from_items`); `map_batches` runs an actor per worker, each building its own
Scanner from the plain ScanSpec (keys travel as paths: key material never enters Ray's object
store). The driver streams the results back and journals them batch by batch, as the local engine does.

Locally it starts a small Ray (num_cpus = 2, a bounded object store, no dashboard); with an address
it joins an existing cluster, whose workers must have ddpm-guard installed (docs/audit.md).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.api.audit.engine import ScanSpec, score_batch

OBJECT_STORE_BYTES = 256 * 1024**2


class _AuditActor:
    def __init__(self, spec: dict, prefix: tuple[str, str] | None = None):
        self.scanner, self.training = ScanSpec(**spec).build()
        self.prefix = prefix  # (absolute root as Ray reports it, the root as the user spelled it)

    def _name(self, path: str) -> str:
        if self.prefix is None:
            return path
        absolute, given = self.prefix
        p = "/" + path.lstrip("/") if absolute.startswith("/") else path
        return given + p[len(absolute):] if p.startswith(absolute) else path

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch, path=[self._name(str(p)) for p in batch["path"]])
        n = len(batch["path"])
        datas = batch.get("bytes", [None] * n)
        errors = batch.get("error", [None] * n)
        items = [(str(p), None if d is None else bytes(d), None if e is None or e == "" else str(e))
                 for p, d, e in zip(batch["path"], datas, errors)]
        rows = score_batch(items, self.scanner, self.training)
        return {"path": np.array([str(p) for p in batch["path"]], dtype=object),
                "row": np.array([json.dumps(r, sort_keys=True) for r in rows], dtype=object)}


class RayScorer:
    def __init__(self, spec: ScanSpec, *, workers: int | None = None, address: str | None = None, batch: int = 256):
        try:
            import ray
        except ImportError:
            raise GuardError("the Ray engine needs Ray: pip install 'ddpm-guard[ray]'") from None
        self.ray, self.batch = ray, batch
        self.spec = {k: getattr(spec, k) for k in ("detector", "checkpoint", "key_files", "trust_anchors", "alpha",
                                                   "db_url", "training", "decoder")}
        self.spec["device"] = "cpu" if address is None else None
        # a local actor computes with the driver's thread count: a convolution's sums are ordered by its
        # threads, and equal orders give bit-equal scores, so the two engines' rows are equal
        self.spec["threads"] = None if address else torch.get_num_threads()
        self.workers = workers or 1
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
                             log_to_driver=False, configure_logging=False)
            except Exception as e:  # noqa: BLE001 - Ray's start-up errors come in many types
                raise GuardError(f"could not start or join Ray ({str(e).splitlines()[0][:200]})") from None
            self._started = True
        else:
            self._started = False
        import logging

        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False

    def _run(self, ds, prefix: tuple[str, str] | None = None):
        import ray.data

        out = ds.map_batches(_AuditActor, fn_constructor_args=(self.spec, prefix), batch_size=self.batch,
                             compute=ray.data.ActorPoolStrategy(size=self.workers), num_cpus=1, batch_format="numpy")
        for b in out.iter_batches(batch_size=self.batch, batch_format="numpy"):
            yield [json.loads(r) for r in b["row"]]

    def score_files(self, paths: list[str], root: str):
        """Rows for readable files under the folder `root`, read by Ray; one list of rows per output batch.
        Ray reports absolute paths; the actors give each row its input's spelling back."""
        if not paths:
            return
        ds = self.ray.data.read_binary_files([os.path.abspath(p) for p in paths], include_paths=True)
        yield from self._run(ds, (os.path.abspath(root), root))

    def score_items(self, items: list[tuple[str, bytes | None, str | None]]):
        """Rows for archive members the driver read (each with bytes)."""
        if not items:
            return
        ds = self.ray.data.from_items([{"path": p, "bytes": d} for p, d, _ in items])
        yield from self._run(ds)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
