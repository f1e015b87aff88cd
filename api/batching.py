"""Gather concurrent scans into one model call: a small queue with a window of a few milliseconds.

The classifier and the watermark's inversion run per batch, so 16 one-image requests scored as one
16-image batch cost far less than 16 separate calls. One worker thread runs the model calls, so they
never compete for the two cores; the event loop only queues and wakes requests.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


class Batcher:
    def __init__(self, fn: Callable[[list, object], list], window_ms: float = 5.0, max_batch: int = 64):
        self.fn, self.window, self.max_batch = fn, window_ms / 1000.0, max_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool_: ThreadPoolExecutor | None = None

    @property
    def _pool(self) -> ThreadPoolExecutor:
        if self._pool_ is None:  # (re)created on use: an app's lifespan may run more than once
            self._pool_ = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan")
        return self._pool_

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task, self._queue = None, None
        if self._pool_ is not None:
            self._pool_.shutdown(wait=True)
            self._pool_ = None

    async def submit(self, items: list, ctx: object) -> list:
        """fn(items, ctx), computed in one batch with other requests' items (one app has one ctx)."""
        loop = asyncio.get_running_loop()
        if self.window <= 0 or self._queue is None:
            return await loop.run_in_executor(self._pool, self.fn, items, ctx)
        fut = loop.create_future()
        await self._queue.put((items, ctx, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            ctx = jobs[0][1]
            size = len(jobs[0][0])
            deadline = loop.time() + self.window
            while size < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                if job[1] is not ctx:  # another context: run it in the next batch
                    self._queue.put_nowait(job)
                    break
                jobs.append(job)
                size += len(job[0])
            flat = [it for items, _, _ in jobs for it in items]
            try:
                rows = await loop.run_in_executor(self._pool, self.fn, flat, ctx)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                for _, _, fut in jobs:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            k = 0
            for items, _, fut in jobs:
                if not fut.done():
                    fut.set_result(rows[k:k + len(items)])
                k += len(items)
