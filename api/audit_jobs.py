"""The service's audit jobs: one worker thread runs queued audits in order, journaling as it goes.

A job's folder is HOME/audits/<id>/ (the uploaded archive and the report folder with its journal).
If the service stops (or dies) mid-job, the job stays "running" in the database; the next start
queues it again and `run_audit` resumes from its journal, so no file is scored twice or lost.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.api.audit import run_audit
from ddpm_guard.api.audit.engine import ScanSpec
from ddpm_guard.api.settings import Settings
from ddpm_guard.api.store import AuditJobs

log = logging.getLogger("ddpm_guard.audit")


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.home / "audits" / job_id


class AuditWorker:
    def __init__(self, settings: Settings, jobs: AuditJobs, spec: ScanSpec, deep_spec: ScanSpec | None = None):
        self.settings, self.jobs, self.spec, self.deep_spec = settings, jobs, spec, deep_spec
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="audit-worker", daemon=True)

    def start(self) -> None:
        for job_id in self.jobs.unfinished():  # resume what a stopped service left
            self._queue.put(job_id)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            self.run(job_id)

    def run(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.status in ("done", "failed"):
            return
        folder = job_dir(self.settings, job_id)
        archive = next((p for p in folder.glob("input.*")), None)
        self.jobs.update(job_id, status="running")
        spec = self.deep_spec if (job.watermark and self.deep_spec is not None) else self.spec
        try:
            if archive is None:
                raise GuardError("the uploaded archive is missing")
            result = run_audit(archive, folder / "report", spec, progress=False, cancel=self._stop, label=job.input_name,
                               on_progress=lambda done, total: self.jobs.update(job_id, done=done, total=total))
        except GuardError as e:
            self.jobs.update(job_id, status="failed", error=str(e)[:1000])
            return
        except Exception:  # noqa: BLE001 - a bug: the job fails with a generic message, the service goes on
            log.exception("audit job %s failed", job_id)
            self.jobs.update(job_id, status="failed", error="internal error while auditing; see the service log")
            return
        if result.get("interrupted"):
            return  # stays "running": the next start resumes it from the journal
        self.jobs.update(job_id, status="done", done=result["files"], total=result["files"])
