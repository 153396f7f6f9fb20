"""The node's alarm center: stores the events ``raise_alarm``/``clear_alarm`` produce, keeps the
``ucpush_alarms_active`` gauge, bounds the history, and runs the uploader every
``push_frequency_minutes`` or when ``ucpush alarms pushnow`` asks.

    async with AlarmCenter(store.alarms, settings.alarms, source=cloud):
        ...  # the node runs; alarms raised anywhere in the process are stored and uploaded

Events are written in order by one task, so a raise and the clear that follows it never
swap; a database hiccup delays them (retried every second) but loses none while the node
runs. The frequency and minimum level are re-read from the database at every poll, so the
CLI's changes reach a running node within ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

from prometheus_client import Gauge

from ucpush.alarms import AlarmEvent, install_sink, remove_sink
from ucpush.alarms.store import SqlAlarmRepository
from ucpush.alarms.uploader import AlarmUploader, UploadResult, UploadSource
from ucpush.config import AlarmSettings
from ucpush.logging import get_logger

_log = get_logger("ucpush.alarms")

ACTIVE_ALARMS = Gauge(
    "ucpush_alarms_active", "Active alarms of this node by name and severity", ["name", "severity"]
)
# After a failed upload, try again this soon (or at the push frequency, if sooner).
_RETRY_SECONDS = 60.0
_WRITE_RETRY_SECONDS = 1.0
_PRUNE_EVERY_CLEARS = 50


def _now() -> datetime:
    return datetime.now(UTC)


class AlarmCenter:
    def __init__(
        self,
        repo: SqlAlarmRepository,
        settings: AlarmSettings,
        *,
        source: UploadSource | None = None,
        node: str = "",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.node = node or settings.node_name or socket.gethostname()
        self.uploader = (
            AlarmUploader(repo, settings, self.node, source) if source is not None else None
        )
        self._monotonic = monotonic
        self._queue: deque[AlarmEvent] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active: dict[tuple[str, str], str] = {}  # (name, key) → severity
        self._tasks: list[asyncio.Task[None]] = []
        self._clears_since_prune = 0
        self._last_upload: float | None = None  # monotonic time of the last attempt
        self._last_failed = False
        self._served_request: datetime | None = None
        self._upload_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # life cycle

    async def start(self) -> None:
        for record in await self.repo.list_alarms(node=self.node, limit=100_000):
            self._active[(record.name, record.key)] = record.severity
        self._refresh_gauge()
        await self.repo.prune_history(self.settings.history_size)
        prefs = await self.repo.prefs(_now())
        # A pushnow made while this node was down is not replayed; the first scheduled
        # upload comes one poll after start.
        self._served_request = prefs.push_requested_at
        self._loop = asyncio.get_running_loop()
        install_sink(self)
        self._tasks.append(asyncio.create_task(self._write_forever()))
        if self.uploader is not None:
            self._tasks.append(asyncio.create_task(self._schedule_forever()))
        _log.info("alarm center started", node=self.node, active=len(self._active))

    async def stop(self) -> None:
        remove_sink(self)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout=5.0)
        if self._queue:
            _log.error("alarm events not stored at shutdown", count=len(self._queue))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def __aenter__(self) -> AlarmCenter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # events

    def submit(self, event: AlarmEvent) -> None:
        if self._loop is not None and not self._on_loop_thread():
            # Raised from a worker thread (asyncio.to_thread): hand over to the loop.
            self._loop.call_soon_threadsafe(self._accept, event)
            return
        self._accept(event)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _accept(self, event: AlarmEvent) -> None:
        instance = (event.name, event.key)
        if event.raised:
            self._active[instance] = event.severity
        elif self._active.pop(instance, None) is None:
            return  # not active: nothing to clear, no database write
        self._refresh_gauge()
        self._queue.append(event)
        self._idle.clear()
        self._wake.set()

    def active(self) -> dict[tuple[str, str], str]:
        """This node's active alarm instances, (name, key) → severity."""
        return dict(self._active)

    async def flush(self) -> None:
        """Wait until every submitted event is stored."""
        await self._idle.wait()

    async def _write_forever(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            event = self._queue[0]
            try:
                await self._write(event)
            except Exception as exc:
                _log.warning("alarm store failed, retrying", alarm=event.name, error=str(exc))
                await asyncio.sleep(_WRITE_RETRY_SECONDS)
                continue
            self._queue.popleft()

    async def _write(self, event: AlarmEvent) -> None:
        now = _now()
        if event.raised:
            await self.repo.raise_alarm(
                self.node, event.name, event.severity, event.key, event.details, now
            )
            return
        if await self.repo.clear_alarm(self.node, event.name, event.key, now):
            _log.info("alarm cleared", alarm=event.name, severity=event.severity)
            self._clears_since_prune += 1
            if self._clears_since_prune >= _PRUNE_EVERY_CLEARS:
                self._clears_since_prune = 0
                await self.repo.prune_history(self.settings.history_size)

    def _refresh_gauge(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for (name, _), severity in self._active.items():
            counts[(name, severity)] = counts.get((name, severity), 0) + 1
        for sample in list(ACTIVE_ALARMS.collect()[0].samples):
            labels = (sample.labels["name"], sample.labels["severity"])
            if labels not in counts:
                ACTIVE_ALARMS.labels(*labels).set(0)
        for labels, count in counts.items():
            ACTIVE_ALARMS.labels(*labels).set(count)

    # upload

    async def push_now(self) -> UploadResult:
        """Store pending events, upload at once and record the result for the CLI."""
        if self.uploader is None:
            raise RuntimeError("this alarm center has no upload source")
        async with self._upload_lock:
            await self.flush()
            result = await self.uploader.upload()
            # What the upload itself raised or cleared is stored now and sent next time.
            await self.flush()
            self._last_upload = self._monotonic()
            self._last_failed = bool(result.error)
            await self.repo.record_push_result(_now(), result.error or result.skipped)
            return result

    async def _schedule_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self._tick()
            except Exception as exc:  # the database may be briefly unreachable
                _log.warning("alarm upload schedule failed", error=str(exc))

    async def _tick(self) -> None:
        prefs = await self.repo.prefs(_now())
        requested = prefs.push_requested_at
        asked = requested is not None and (
            self._served_request is None or requested > self._served_request
        )
        # Re-read every poll: a frequency changed with the CLI applies from the last upload.
        interval = 60.0 * (prefs.push_frequency_minutes or self.settings.push_frequency_minutes)
        if self._last_failed:
            interval = min(interval, _RETRY_SECONDS)
        due = self._last_upload is None or self._monotonic() >= self._last_upload + interval
        if asked or due:
            self._served_request = requested
            result = await self.push_now()
            _log.info(
                "alarm upload",
                reason="pushnow" if asked else "schedule",
                sent=result.sent,
                error=result.error,
                skipped=result.skipped,
            )
