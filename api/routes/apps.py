"""The applications as routes: each takes a multipart upload, runs one `api.usecases.apply_for_account` call
in a worker thread and answers JSON (base64 PNG) or, with `Accept: image/png`, the PNG itself."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ddpm_guard.api.deps import AccountDep, RuntimeDep
from ddpm_guard.api.runtime import Runtime
from ddpm_guard.api.usecases import apply_for_account, inpaint_mask
from ddpm_guard.api.schemas import AppImage
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import decode_image, to_tensor

router = APIRouter(prefix="/v1", tags=["applications"])
RESPONSES = {200: {"content": {"image/png": {}}}, 400: {}, 401: {}, 413: {}, 429: {}}
Steps = Annotated[int | None, Form(ge=1, le=1000, description="DDNM steps (default 100)")]
Seed = Annotated[int | None, Form(ge=0, le=2**31 - 1, description="same seed, same output; default random")]


async def _decode(rt: Runtime, f: UploadFile, what: str):
    cap = rt.settings.max_file_bytes
    data = await f.read(cap + 1)
    if len(data) > cap:
        raise GuardError(f"{what}: over the {cap}-byte limit per file")
    return to_tensor(decode_image(data, name=f.filename or what))


async def _answer(request: Request, rt: RuntimeDep, account, app: str, img, **kw):
    out = await run_in_threadpool(apply_for_account, rt, account, app, img, **kw)
    if "image/png" in request.headers.get("accept", ""):
        return Response(out["png"], media_type="image/png", headers={
            "Content-Disposition": f'attachment; filename="{out["filename"]}"', "X-DDPM-Guard-Payload": out["payload"]})
    return AppImage(application=app, filename=out["filename"], png_base64=base64.b64encode(out["png"]).decode(),
                    payload=out["payload"], seed=out["seed"], width=out["width"], height=out["height"])


@router.post("/refine", response_model=AppImage, responses=RESPONSES,
             summary="Super-resolve (scale 2 or 4) or deblur (a Gaussian of std deblur pixels) an image")
async def refine(request: Request, rt: RuntimeDep, account: AccountDep,
                 image: Annotated[UploadFile, File(description="the low-resolution or blurred image")],
                 scale: Annotated[int | None, Form(description="upscale factor: 2 or 4")] = None,
                 deblur: Annotated[float | None, Form(gt=0, le=8, description="blur std in pixels")] = None,
                 steps: Steps = None, seed: Seed = None):
    img = await _decode(rt, image, "image")
    return await _answer(request, rt, account, "refine", img, scale=scale, deblur=deblur, steps=steps, seed=seed)


@router.post("/inpaint", response_model=AppImage, responses=RESPONSES,
             summary="Fill the masked pixels (white in the mask); the other pixels come back exactly")
async def inpaint(request: Request, rt: RuntimeDep, account: AccountDep,
                  image: Annotated[UploadFile, File(description="the image")],
                  mask: Annotated[UploadFile | None, File(description="white = fill, black = keep; same size")] = None,
                  shape: Annotated[Literal["box", "half", "strokes"] | None, Form(description="a built-in mask instead")] = None,
                  steps: Steps = None, seed: Seed = None):
    if (mask is None) == (shape is None):
        raise GuardError("give exactly one of mask (a file) and shape (box, half or strokes)")
    img = await _decode(rt, image, "image")
    known = inpaint_mask(shape if shape is not None else await _decode(rt, mask, "mask"), img, seed or 0)
    return await _answer(request, rt, account, "inpaint", img, known=known, steps=steps, seed=seed)


@router.post("/colorize", response_model=AppImage, responses=RESPONSES,
             summary="Colour for a grey photo of any size; its grey levels are kept exactly")
async def colorize(request: Request, rt: RuntimeDep, account: AccountDep,
                   image: Annotated[UploadFile, File(description="a grey image (a colour one is colorized from its luma)")],
                   steps: Steps = None, seed: Seed = None):
    img = await _decode(rt, image, "image")
    return await _answer(request, rt, account, "colorize", img, steps=steps, seed=seed)
