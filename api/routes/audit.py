from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from ddpm_guard.api.audit.sources import archive_kind
from ddpm_guard.api.audit_jobs import job_dir
from ddpm_guard.api.deps import AccountDep, RuntimeDep
from ddpm_guard.api.schemas import AuditJob
from ddpm_guard.api.store import AuditJobs

router = APIRouter(prefix="/v1", tags=["audit"])
REPORTS = {"report.html": "text/html", "report.json": "application/json", "report.csv": "text/csv"}


def _view(row, request: Request) -> AuditJob:
    links = {}
    if row.status == "done":
        links = {name: str(request.url_for("audit_report", job_id=row.id, name=name)) for name in REPORTS}
    return AuditJob(id=row.id, status=row.status, input=row.input_name, done=row.done, total=row.total,
                    error=row.error, reports=links)


@router.post("/audit", response_model=AuditJob, status_code=status.HTTP_202_ACCEPTED,
             summary="Start an audit of an uploaded .zip or .tar(.gz); poll GET /v1/audit/{id}",
             responses={400: {}, 401: {}, 413: {}, 429: {}})
async def start_audit(request: Request, rt: RuntimeDep, account: AccountDep,
                      archive: Annotated[UploadFile, File(description="a .zip, .tar or .tar.gz of images")],
                      watermark: Annotated[bool, Form(description="also the deep watermark check (slow)")] = False):
    from pathlib import Path

    name = Path(archive.filename or "upload").name
    kind = archive_kind(Path(name))
    if kind is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "upload a .zip, .tar, .tar.gz or .tgz archive")
    jobs = AuditJobs(rt.store)
    job_id = jobs.create(account, name, watermark)
    folder = job_dir(rt.settings, job_id)
    suffix = ".zip" if kind == "zip" else (".tar.gz" if name.lower().endswith((".gz", ".tgz")) else ".tar")

    def save() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"input{suffix}", "wb") as f:
            shutil.copyfileobj(archive.file, f, 1024 * 1024)

    await run_in_threadpool(save)
    request.app.state.audit_worker.submit(job_id)
    return _view(jobs.get(job_id), request)


@router.get("/audit/{job_id}", response_model=AuditJob, summary="An audit job's progress, then its report links",
            responses={401: {}, 404: {}})
def audit_status(job_id: str, request: Request, rt: RuntimeDep, account: AccountDep) -> AuditJob:
    row = AuditJobs(rt.store).get(job_id, account)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such audit job for this account")
    return _view(row, request)


@router.get("/audit/{job_id}/{name}", name="audit_report", summary="A finished audit's report file",
            responses={200: {"content": {t: {} for t in REPORTS.values()}}, 401: {}, 404: {}},
            response_class=FileResponse)
def audit_report(job_id: str, name: str, rt: RuntimeDep, account: AccountDep):
    row = AuditJobs(rt.store).get(job_id, account)
    if row is None or row.status != "done" or name not in REPORTS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report")
    return FileResponse(job_dir(rt.settings, job_id) / "report" / name, media_type=REPORTS[name])
