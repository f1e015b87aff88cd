"""The HTTP service: `create_app()`. Models load in the lifespan, never at import; routes are thin.

Hardening that Starlette and uvicorn do not do for us: a request body limit enforced before any
parsing (Content-Length checked up front, streamed bodies counted as they arrive), a cap on files
per request, the project's one safe decoder on every image, and user errors as 4xx with one clear
message. No request header, key or secret is ever logged or echoed.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.api.batching import Batcher
from ddpm_guard.api.deps import RateLimiter
from ddpm_guard.api.runtime import Runtime, key_files, open_runtime, prepare_home
from ddpm_guard.api.scan import scan_items
from ddpm_guard.api.settings import Settings, load_settings

log = logging.getLogger("ddpm_guard.service")


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over its limit, before the app parses anything. `limits`
    maps path prefixes to their own limit (an audit archive is larger than a scan)."""

    def __init__(self, app, limit: int, limits: dict[str, int] | None = None):
        self.app, self.default, self.limits = app, limit, limits or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = next((v for k, v in self.limits.items() if scope.get("path", "").startswith(k)), self.default)
        return await self._limited(scope, receive, send, limit)

    async def _limited(self, scope, receive, send, limit: int):
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return await _reject(send, 400, "invalid Content-Length")
            if too_big:
                return await _reject(send, 413, f"request body over the {limit}-byte limit")
        seen, started = 0, False

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracking_send)
        except _TooLarge:
            if not started:
                await _reject(send, 413, f"request body over the {limit}-byte limit")


class _TooLarge(Exception):
    pass


async def _reject(send, code: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """The app. `runtime` (tests) skips loading; otherwise the lifespan prepares the home and loads."""
    settings = settings or (runtime.settings if runtime else load_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if runtime is None:
            await run_in_threadpool(prepare_home, settings)
            app.state.runtime = await run_in_threadpool(lambda: open_runtime(settings, color=True))
        else:
            app.state.runtime = runtime
        await app.state.batcher.start()
        app.state.audit_worker = _audit_worker(app.state.runtime)
        app.state.audit_worker.start()
        log.info("ready: home %s, %d watermark key(s) in the ring", settings.home, len(app.state.runtime.scanner.keys))
        try:
            yield
        finally:
            await run_in_threadpool(app.state.audit_worker.stop)
            await app.state.batcher.stop()
            if runtime is None:
                app.state.runtime = None

    app = FastAPI(title="ddpm-guard", version="0.1.0", lifespan=lifespan,
                  description="Generate watermarked, signed images and scan uploads for synthetic content.")
    app.state.runtime = None
    app.state.settings = settings
    app.state.limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.batcher = Batcher(scan_items, window_ms=settings.batch_window_ms, max_batch=settings.max_batch)

    @app.exception_handler(GuardError)
    async def guard_error(_request: Request, exc: GuardError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    from ddpm_guard.api.routes import apps, audit, generate, health, scan

    app.include_router(health.router)
    app.include_router(scan.router)
    app.include_router(generate.router)
    app.include_router(apps.router)
    app.include_router(audit.router)
    _metrics(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, limits={"/v1/audit": settings.max_audit_bytes})
    return app


def _audit_worker(rt: Runtime):
    """The audit worker: the default checks, and the deep spec with the service's key ring for
    jobs that ask for the watermark check. Keys go to it as file paths, like to a Ray actor."""
    from ddpm_guard.api.audit_jobs import AuditWorker
    from ddpm_guard.api.store import AuditJobs
    from ddpm_guard.api.usecases import audit_spec

    s, anchors = rt.settings, rt.scanner.trust_anchors
    ring = tuple(str(p) for p in key_files(s.keys_dir))
    deep = audit_spec(s, key_files=ring, trust_anchors=anchors) if ring else None
    return AuditWorker(s, AuditJobs(rt.store), audit_spec(s, trust_anchors=anchors), deep)


def _metrics(app: FastAPI) -> None:
    """Prometheus text at /metrics (request counters, latency histograms), hidden from the schema."""
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator(registry=CollectorRegistry(), excluded_handlers=["/metrics"]).instrument(app).expose(
        app, include_in_schema=False)
