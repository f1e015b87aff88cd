"""Request-scoped dependencies: the loaded runtime, the calling account (API key + rate limit)."""

from __future__ import annotations

import math
import threading
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from ddpm_guard.api.runtime import Runtime
from ddpm_guard.api.store import Account


def get_runtime(request: Request) -> Runtime:
    rt = getattr(request.app.state, "runtime", None)
    if rt is None:  # the lifespan has not finished loading the models
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is still starting", headers={"Retry-After": "5"})
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute, bursts up to the same number."""

    def __init__(self, per_minute: int):
        self.rate, self.capacity = per_minute / 60.0, float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        """0 when allowed, else the seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[who] = (tokens - 1, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1 - tokens) / self.rate


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None


def require_account(request: Request, rt: RuntimeDep) -> Account:
    account = rt.store.authenticate(_presented_key(request))
    if account is None:
        # one message for missing, malformed, unknown and revoked keys: nothing to probe
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid API key is required (X-API-Key or Authorization: Bearer)",
                            headers={"WWW-Authenticate": "Bearer"})
    wait = request.app.state.limiter.take(str(account.id))
    if wait > 0:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "rate limit exceeded for this API key",
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})
    return account


AccountDep = Annotated[Account, Depends(require_account)]
