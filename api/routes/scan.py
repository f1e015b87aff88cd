from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Request, UploadFile, status

from ddpm_guard.api.deps import AccountDep, RuntimeDep
from ddpm_guard.api.schemas import ScanResponse

router = APIRouter(prefix="/v1", tags=["scan"])


@router.post("/scan", response_model=ScanResponse, response_model_exclude_none=False,
             summary="One verdict per uploaded image, with its evidence",
             responses={401: {}, 413: {}, 422: {}, 429: {}})
async def scan(request: Request, rt: RuntimeDep, account: AccountDep,
               files: Annotated[list[UploadFile], File(description="one or more images")]) -> ScanResponse:
    limit = rt.settings.max_files
    if len(files) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"at most {limit} files per request, got {len(files)}")
    cap = rt.settings.max_file_bytes
    items = []
    for i, f in enumerate(files):
        name = f.filename or f"file{i}"
        data = await f.read(cap + 1)
        items.append((name, None, f"{name}: over the {cap}-byte limit per file") if len(data) > cap else (name, data, None))
    rows = await request.app.state.batcher.submit(items, rt.scanner)
    if len(rows) == 1 and rows[0]["verdict"] == "unreadable":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, rows[0]["error"])
    return ScanResponse(results=rows)
