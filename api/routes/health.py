from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ddpm_guard.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Readiness: models and state are loaded",
            responses={503: {"model": Health}})
def readyz(request: Request):
    if getattr(request.app.state, "runtime", None) is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return Health(status="ready")
