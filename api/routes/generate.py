from __future__ import annotations

import base64
import io
import zipfile

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ddpm_guard.api.deps import AccountDep, RuntimeDep
from ddpm_guard.api.usecases import generate_for_account, prompt_label
from ddpm_guard.api.schemas import GeneratedImage, GenerateRequest, GenerateResponse

router = APIRouter(prefix="/v1", tags=["generate"])


@router.post("/generate", response_model=GenerateResponse, summary="Watermarked, C2PA-signed digits",
             responses={200: {"content": {"application/zip": {}}}, 400: {}, 401: {}, 429: {}})
async def generate(req: GenerateRequest, request: Request, rt: RuntimeDep, account: AccountDep):
    # loading and running the prompt encoder both block: keep them off the event loop
    label = await run_in_threadpool(prompt_label, req.prompt, req.label, prefix="")
    files = await run_in_threadpool(generate_for_account, rt, account, req.n, label=label, steps=req.steps,
                                    seed=req.seed, guidance=req.guidance, fast=req.fast,
                                    guided_mark=req.guided_mark)
    if "application/zip" in request.headers.get("accept", ""):
        return Response(zip_files(files), media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="ddpm-guard.zip"'})
    return GenerateResponse(account=account.name, seed=files[0]["seed"], guided_mark=req.guided_mark, images=[
        GeneratedImage(filename=f["filename"], png_base64=base64.b64encode(f["png"]).decode(), label=f["label"],
                       payload=f["payload"]) for f in files])


def zip_files(files: list[dict]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # PNGs are already compressed
        for f in files:
            z.writestr(f["filename"], f["png"])
    return buf.getvalue()
