"""The asyncio client: the same queue, batches and retries as `Client`, on the event loop."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Generator
from typing import Any, TypeVar

import httpx2 as httpx

from eventpipe_client._wire import (
    MAX_EVENTS,
    Counters,
    Event,
    OnError,
    OnRejected,
    Policy,
    Post,
    Reply,
    Report,
    Sleep,
    batches_of,
    deliver,
    event_body,
    single,
)
from eventpipe_client.client import reply_of, tls_context, user_agent

T = TypeVar("T")


class AsyncClient:
    """`Client` for asyncio producers: `await send(...)` queues (waiting for room when the
    queue is full and block=True), one sender task per client delivers. Use `async with`, or
    `await close()` before the loop ends: an event loop has no exit hook to flush from."""

    def __init__(
        self,
        api_key: str,
        base_url: str = "http://127.0.0.1:8000",
        *,
        max_queue: int = 10_000,
        block: bool = True,
        linger: float = 0.05,
        concurrency: int = 2,
        timeout: float = 10.0,
        policy: Policy | None = None,
        on_rejected: OnRejected | None = None,
        on_error: OnError | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("an API key is required (AS_...)")
        self.max_queue, self.block, self.linger = max_queue, block, linger
        self.concurrency = max(1, concurrency)
        self.policy = policy or Policy()
        self.counters = Counters()
        self.report = Report(self.counters, on_rejected, on_error)
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": user_agent()},
            transport=transport,
            verify=tls_context(),
        )
        self._queue: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._in_flight = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def send(
        self,
        event_name: str,
        email: str | None = None,
        contact_id: str | None = None,
        properties: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Queue one event; False if it was dropped (full with block=False, or closed)."""
        event = event_body(event_name, email, contact_id, properties, idempotency_key)
        if len(self._queue) >= self.max_queue and not await self._wait_for_room():
            self.counters.add("dropped")
            return False
        if self._closed:
            self.counters.add("dropped")
            return False
        self._queue.append(event)
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._run()) for _ in range(self.concurrency)]
        if len(self._queue) >= MAX_EVENTS:
            self._wake.set()
        return True

    async def _wait_for_room(self) -> bool:
        if not self.block:
            return False
        self._wake.set()
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._queue) < self.max_queue or self._closed)
        return not self._closed

    async def send_one(
        self,
        event_name: str,
        email: str | None = None,
        contact_id: str | None = None,
        properties: dict[str, Any] | None = None,
        *,
        wait: int | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """As Client.send_one: the queued event, or with `wait` the stored record."""
        body = event_body(event_name, email, contact_id, properties, None)
        return await self._drive(single(body, wait, idempotency_key, self.policy))

    async def _run(self) -> None:
        while not (self._closed and not self._queue):
            if len(self._queue) < MAX_EVENTS:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.linger)
                except TimeoutError:
                    pass
            self._wake.clear()
            events = [self._queue.popleft() for _ in range(min(MAX_EVENTS, len(self._queue)))]
            if not events:
                continue
            self._in_flight += len(events)
            await self._notify()
            try:
                await self._deliver(events)
            finally:
                self._in_flight -= len(events)
                await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _deliver(self, events: list[Event]) -> None:
        for batch in batches_of(events):
            await self._drive(deliver(batch, self.policy, self.report))

    async def _drive(self, steps: Generator[Post | Sleep, Reply, T]) -> T:
        try:
            step = next(steps)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = steps.send(Reply())
                else:
                    step = steps.send(await self._exchange(step))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _exchange(self, post: Post) -> Reply:
        try:
            r = await self.http.post(post.path, content=post.content, headers=post.headers)
        except httpx.HTTPError as exc:
            return Reply(error=f"{type(exc).__name__}: {exc}")
        return reply_of(r.status_code, r.headers.get("retry-after"), r.content)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event has its outcome; False if `timeout` ran out."""
        self._wake.set()
        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: not self._queue and not self._in_flight),
                    timeout,
                )
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float | None = None) -> bool:
        done = await self.flush(timeout)
        self._closed = True
        self._wake.set()
        await self._notify()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()
        return done

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
