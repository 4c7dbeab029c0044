"""``StoreThread``: the store's calls run on one dedicated thread, awaited from the event loop.

Owns: the thread and the hand-off. Must not: hold state of its own or reorder calls.

Why a thread and not direct calls: a read is tens of microseconds, but a write commits with
``synchronous=FULL``, which waits for an fsync of the WAL (about a millisecond on this VM's disk,
tens of milliseconds on a busy cloud disk; bench/bench_store.py prints both and the cost of the
hop). The loop must not stall for that while it serves the API and watches tasks, so every call
goes to one worker thread, in the order awaited. One thread also means one writer, so the
SQLite write lock is never contended inside the agent.

Cancelling an awaiting coroutine does not cancel its call: a transaction that started will
commit (or roll back) whole, and the awaiter just stops waiting for the answer. The executor is
stopped by ``close``, after the calls already queued have run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from agent.store.protocol import Store

T = TypeVar("T")


class StoreThread:
    """``await st.run(lambda s: s.get_task(job_id, task_id))`` runs the call off the loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # One worker: calls run in the order they are awaited; a ThreadPoolExecutor's thread is
        # joined at interpreter exit, which lets a queued commit finish instead of being cut.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, call: Callable[[Store], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call, self.store)

    async def aclose(self) -> None:
        """Run what is queued, then close the store on its own thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.store.close)
        self._executor.shutdown(wait=True)
