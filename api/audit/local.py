"""Run an audit: list the inputs, skip what the journal already holds, score the rest in batches
(locally or on Ray), append each batch to the journal with an fsync, then write the reports.

After a crash (even kill -9) the same command continues: a file whose path and SHA-256 are in the
journal is not scored again, a changed file is, and the final report is built from the journal in
input order, so it equals an uninterrupted run's row for row.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.api.audit.engine import ScanSpec, score_batch
from ddpm_guard.api.audit.journal import Journal
from ddpm_guard.api.audit.report import duplicate_groups, summarize, write_reports
from ddpm_guard.api.audit.sources import Entry, iter_entries

JOURNAL = "journal.jsonl"
STATE = "audit.json"


def _prepare_out(out: Path, source: Path, spec: ScanSpec) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuardError(f"{out}: cannot create the report folder ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise GuardError(f"{out}: the report folder is not writable")
    state = {"input": str(source.resolve()), "watermark_keys": len(spec.key_files), "training": spec.training}
    f = out / STATE
    if f.exists():
        try:
            old = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if old != state:
            raise GuardError(f"{out} holds an audit with other inputs or checks ({(old or {}).get('input')}); "
                             "choose another --out, or delete it to start over")
    else:
        f.write_text(json.dumps(state))


def _read_items(batch: list[Entry], done: dict[str, dict]) -> tuple[list, int]:
    """(items still to score, how many were skipped as already in the journal with the same content)."""
    items, skipped = [], 0
    for e in batch:
        data, err = e.read()
        sha = hashlib.sha256(data).hexdigest() if data is not None else None
        old = done.get(e.path)
        if old is not None and old.get("sha256") == sha and (sha is not None or old.get("error") == err):
            skipped += 1
            continue
        items.append((e.path, data, err))
    return items, skipped


def run_audit(source: str | os.PathLike, out: str | os.PathLike, spec: ScanSpec | None = None, *,
              engine: str = "local", batch: int = 256, workers: int | None = None, address: str | None = None,
              progress: bool = True, on_progress: Callable[[int, int], None] | None = None,
              stop_after: int | None = None, cancel=None, label: str | None = None) -> dict:
    """Audit `source` (folder, .zip or .tar(.gz)) into `out`; returns the summary.

    `on_progress(done, total)` is called after each batch (the service's job status uses it).
    `stop_after` (tests) stops after that many files, as a crash would, without writing the reports.
    `cancel` (a threading.Event) stops cleanly after the current batch: {"interrupted": True}, resumable.
    `label` names the input in rows and reports instead of its path (the service: the uploaded name)."""
    from tqdm.auto import tqdm

    source, out, spec = Path(source), Path(out), spec or ScanSpec()
    if engine not in ("local", "ray"):
        raise GuardError(f"unknown engine {engine!r}; use local or ray")
    if batch < 1:
        raise GuardError(f"--batch must be at least 1, got {batch}")
    entries = list(iter_entries(source, label=label))
    _prepare_out(out, source, spec)
    journal = Journal(out / JOURNAL)
    done = journal.load()
    t0 = time.perf_counter()
    bar = tqdm(total=len(entries), disable=not progress, desc="audit", unit="file", file=sys.stderr, smoothing=0.1)
    scored = 0

    def record(rows: list[dict], skipped: int = 0) -> None:
        nonlocal scored
        journal.append(rows)
        scored += len(rows)
        bar.update(len(rows) + skipped)
        if on_progress:
            on_progress(bar.n, len(entries))

    try:
        if engine == "ray":
            scanner = None
            _run_ray(entries, done, spec, record, batch=batch, workers=workers, address=address, source=source)
        else:
            scanner, training = spec.build()
            for i in range(0, len(entries), batch):
                items, skipped = _read_items(entries[i:i + batch], done)
                record(score_batch(items, scanner, training) if items else [], skipped)
                if stop_after is not None and i + batch >= stop_after:
                    return {"stopped_after": i + batch}
                if cancel is not None and cancel.is_set():
                    return {"interrupted": True}
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    by_path = journal.load()
    rows = [by_path[e.path] for e in entries if e.path in by_path]
    groups = duplicate_groups(rows)
    if scanner is not None:
        det = scanner.detector
    else:
        from ddpm_guard.detector.predict import load_detector

        det = load_detector(spec.detector, device="cpu")
    summary = summarize(rows, groups, det.threshold, {"input": label or str(source), "engine": engine,
                                                      "scored_this_run": scored, "seconds_this_run": round(seconds, 3)},
                        None if det.router is None else det.router.by_edit)
    write_reports(out, rows, summary, groups, _reader(entries))
    return summary


def _run_ray(entries: list[Entry], done: dict, spec: ScanSpec, record, *, batch: int, workers: int | None,
             address: str | None, source: Path, chunk: int = 4096) -> None:
    """Folder files go to Ray by path (read_binary_files); archive members and unreadable files by value,
    in chunks, so the driver holds at most `chunk` members' bytes at once."""
    from ddpm_guard.api.audit.ray_engine import RayScorer

    from_archive = source.is_file()
    scorer = RayScorer(spec, workers=workers, address=address, batch=batch)
    try:
        paths, others = [], []
        for i in range(0, len(entries), batch):
            items, skipped = _read_items(entries[i:i + batch], done)
            record([], skipped)
            refused = [it for it in items if it[1] is None]
            if refused:  # nothing to decode: the driver writes their rows without a model
                record(score_batch(refused, None))
            for path, data, err in items:
                if data is None:
                    continue
                if from_archive:
                    others.append((path, data, err))
                else:
                    paths.append(path)
            if len(others) >= chunk:
                for rows in scorer.score_items(others):
                    record(rows)
                others = []
        for rows in scorer.score_items(others):
            record(rows)
        for rows in scorer.score_files(paths, str(source)):
            record(rows)
    finally:
        scorer.close()


def _reader(entries: list[Entry]) -> Callable[[str], bytes | None]:
    by_path = {e.path: e for e in entries}

    def read(path: str) -> bytes | None:
        e = by_path.get(path)
        return e.read()[0] if e else None
    return read
