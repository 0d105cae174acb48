"""The threaded client: `send()` queues, sender threads deliver in batches."""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import os
import ssl
import sys
import threading
import time
import weakref
from collections.abc import Generator, Iterator
from typing import Any, TypeVar

import httpx2 as httpx

from eventpipe_client._wire import (
    MAX_EVENTS,
    Batch,
    Counters,
    Event,
    OnError,
    OnRejected,
    Outcome,
    Policy,
    Post,
    Reply,
    Report,
    Sleep,
    batches_of,
    deliver,
    event_body,
    parse_retry_after,
    single,
)

T = TypeVar("T")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process, made before any sender thread or fork: a context made
    in a forked child while the parent's thread was inside OpenSSL can fail (seen here), and
    one per client costs milliseconds."""
    return ssl.create_default_context()


_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def user_agent() -> str:
    return f"eventpipe-client/0.1 python/{sys.version_info[0]}.{sys.version_info[1]}"


class ForkGate:
    """fork() waits for the requests in flight, and requests wait for the fork: a child
    must never inherit a sender thread caught half-way through something only that thread
    could finish. Seen here: a fork during httpx2's lazy import of its transport, or of the
    `idna` codec in the first getaddrinfo, left the child waiting on that module's import
    lock for ever. The wait is bounded: a request stuck longer than that does not stop the
    fork (its child may then inherit a half-open connection, which it never uses)."""

    WAIT_SECONDS = 5.0

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._busy = 0
        self._forking = False

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def before_fork(self) -> None:
        deadline = time.monotonic() + self.WAIT_SECONDS
        with self._cond:
            self._forking = True
            while self._busy and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        # The lock is held across the fork itself, so no request starts in between.
        self._cond.acquire()

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        self._reset()  # the parent's threads do not exist here, nor their requests


_fork_gate = ForkGate()


def exchange(http: httpx.Client, post: Post) -> Reply:
    """One request; any failure to get an answer is a Reply with `error`, retried later."""
    try:
        with _fork_gate.request():
            response = http.post(post.path, content=post.content, headers=post.headers)
    except httpx.HTTPError as exc:
        return Reply(error=f"{type(exc).__name__}: {exc}")
    return reply_of(response.status_code, response.headers.get("retry-after"), response.content)


def reply_of(status: int, retry_after: str | None, content: bytes) -> Reply:
    import json

    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    return Reply(status, body, parse_retry_after(retry_after))


def drive(http: httpx.Client, steps: Generator[Post | Sleep, Reply, T]) -> T:
    """Run a sans-IO exchange with blocking I/O."""
    try:
        step = next(steps)
        while True:
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                step = steps.send(Reply())
            else:
                step = steps.send(exchange(http, step))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class Client:
    """Send events to eventpipe from any thread; batching, gzip, retries and idempotency
    keys are the client's business.

    `send()` puts the event on a queue of at most `max_queue` events and returns; `threads`
    sender threads take up to 500 events (1 MB) at a time, waiting at most `linger` seconds
    for a batch to fill, and POST them to /v1/events/batch with one Idempotency-Key per batch.
    When the queue is full, `send()` waits for room (`block=True`, the default) or drops the
    event and counts it (`block=False`). `sync=True` delivers each event in the caller's
    thread before `send()` returns (short-lived processes, scripts)."""

    _http: httpx.Client | None

    def __init__(
        self,
        api_key: str,
        base_url: str = "http://127.0.0.1:8000",
        *,
        max_queue: int = 10_000,
        block: bool = True,
        linger: float = 0.05,
        threads: int = 2,
        sync: bool = False,
        timeout: float = 10.0,
        policy: Policy | None = None,
        on_rejected: OnRejected | None = None,
        on_error: OnError | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("an API key is required (AS_...)")
        self.api_key, self.base_url, self.timeout = api_key, base_url.rstrip("/"), timeout
        self.transport = transport  # a test's, or a proxy's; None: httpx2's own
        self.max_queue, self.block, self.linger = max_queue, block, linger
        self.threads_wanted, self.sync = max(1, threads), sync
        self.policy = policy or Policy()
        self.counters = Counters()
        self.report = Report(self.counters, on_rejected, on_error)
        self._closed = False
        self._reset()
        # The connection pool is made here, in the caller's thread, before any sender
        # thread exists: httpx2 imports its transport lazily on the first Client(), and a
        # fork() while a sender thread was inside that import left the child waiting on
        # the module's import lock for ever (seen here, in one run in three).
        self._http = self._new_http()
        _clients.add(self)
        atexit.register(self._at_exit)

    def _reset(self) -> None:
        """Fresh queue, locks, threads and connections: at start, and in a forked child,
        where the parent's threads do not exist and its locks may be held by them."""
        self._queue: collections.deque[Event] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._room = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._http = None
        self._pid = os.getpid()

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            with self._lock:
                if self._http is None:
                    self._http = self._new_http()
        return self._http

    def _new_http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            timeout=self.timeout,
            headers={"Authorization": f"Bearer {self.api_key}", "User-Agent": user_agent()},
            limits=httpx.Limits(max_connections=self.threads_wanted + 2),
            transport=self.transport,
            verify=tls_context(),
        )

    # --- sending ---------------------------------------------------------------------

    def send(
        self,
        event_name: str,
        email: str | None = None,
        contact_id: str | None = None,
        properties: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Queue one event; False if it was dropped (a full queue with block=False, or a
        closed client)."""
        event = event_body(event_name, email, contact_id, properties, idempotency_key)
        if self.sync:
            self._deliver([event])
            return True
        if len(self._queue) >= self.max_queue and not self._wait_for_room():
            self.counters.add("dropped")
            return False
        if self._closed:
            self.counters.add("dropped")
            return False
        self._queue.append(event)
        if not self._threads:
            self._start()
        if len(self._queue) >= MAX_EVENTS:
            self._wake.set()
        return True

    def _wait_for_room(self) -> bool:
        if not self.block:
            return False
        self._wake.set()
        with self._room:
            while len(self._queue) >= self.max_queue and not self._closed:
                self._room.wait(0.1)
        return not self._closed

    def send_batch(self, events: list[Event], idempotency_key: str | None = None) -> Outcome:
        """Deliver up to 500 event bodies now, in this thread, as one batch whose retries all
        carry `idempotency_key` (a fresh one if None); the counters and callbacks see them."""
        return self.deliver(Batch.of(events, idempotency_key))

    def deliver(self, batch: Batch) -> Outcome:
        """send_batch for a batch already encoded (eventpipe-send's blocks)."""
        return drive(self.http, deliver(batch, self.policy, self.report))

    def send_one(
        self,
        event_name: str,
        email: str | None = None,
        contact_id: str | None = None,
        properties: dict[str, Any] | None = None,
        *,
        wait: int | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """POST /v1/events/send now: the 202's queued event, or with `wait` (seconds,
        `Prefer: wait`) the stored record (201) once the worker has it. Raises EventpipeError
        for a refusal (404 CONTACT_NOT_FOUND_FOR_EVENT after a wait, 400s...)."""
        body = event_body(event_name, email, contact_id, properties, None)
        return drive(self.http, single(body, wait, idempotency_key, self.policy))

    # --- the sender threads ----------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._threads or self._closed:
                return
            for n in range(self.threads_wanted):
                thread = threading.Thread(target=self._run, name=f"eventpipe-sender-{n}")
                thread.daemon = True  # atexit still runs while daemon threads live
                self._threads.append(thread)
                thread.start()

    def _run(self) -> None:
        while True:
            if len(self._queue) < MAX_EVENTS:
                self._wake.wait(self.linger)
            events = self._take()
            if events:
                try:
                    self._deliver(events)
                except Exception as exc:  # a sender never dies with events in its hands
                    self.report.failed(events, f"{type(exc).__name__}: {exc}")
                finally:
                    self._done(len(events))
            elif self._stopping:
                return
            else:
                self._wake.clear()

    def _take(self) -> list[Event]:
        """Up to MAX_EVENTS events (_deliver splits a batch over 1 MB)."""
        events: list[Event] = []
        with self._lock:
            queue = self._queue
            while queue and len(events) < MAX_EVENTS:
                events.append(queue.popleft())
            self._in_flight += len(events)
            if events:
                self._room.notify_all()
        return events

    def _deliver(self, events: list[Event]) -> None:
        for batch in batches_of(events):
            self.deliver(batch)

    def _done(self, n: int) -> None:
        with self._lock:
            self._in_flight -= n
            if not self._queue and not self._in_flight:
                self._idle.notify_all()

    # --- flush, close, exit, fork ------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event has its outcome; False if `timeout` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while self._queue or self._in_flight:
                if self._queue and not self._threads:
                    self._lock.release()
                    try:
                        self._start()
                    finally:
                        self._lock.acquire()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(min(left, 0.1) if left is not None else 0.1)
                self._wake.set()
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the sender threads and close the connections; send() after
        close() drops (and counts) the event."""
        done = self.flush(timeout)
        self._closed = True
        self._stopping = True
        self._wake.set()
        for thread in self._threads:
            thread.join(1.0)
        if self._http is not None:
            self._http.close()
            self._http = None
        with self._room:
            self._room.notify_all()
        atexit.unregister(self._at_exit)
        return done

    def _at_exit(self) -> None:
        if not self._closed and os.getpid() == self._pid:
            # Bounded: an exit never hangs on a sender that cannot finish.
            self.close(self.policy.retry_seconds + self.timeout)

    def _after_fork_in_child(self) -> None:
        # The parent sends what it had queued; the child starts empty with its own sender.
        self._reset()
        self.counters = Counters()
        self.report = Report(self.counters, self.report.on_rejected, self.report.on_error)
        if "multiprocessing" in sys.modules:
            # A multiprocessing child ends with os._exit, which skips atexit, after running
            # its finalizers; it clears them first, then runs its after-fork hooks.
            from multiprocessing import util

            util.register_after_fork(self, _finalize_on_exit)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finalize_on_exit(client: Client) -> None:
    from multiprocessing import util

    # Bounded like the atexit flush: a child's exit never hangs on a sender that cannot finish.
    timeout = client.policy.retry_seconds + client.timeout
    util.Finalize(client, client.close, args=(timeout,), exitpriority=100)


def _reinit_in_child() -> None:
    for client in list(_clients):
        if not client._closed:
            client._after_fork_in_child()


def _child_after_fork() -> None:
    _fork_gate.after_fork_in_child()
    _reinit_in_child()


os.register_at_fork(
    before=_fork_gate.before_fork,
    after_in_parent=_fork_gate.after_fork_in_parent,
    after_in_child=_child_after_fork,
)
