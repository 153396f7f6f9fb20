"""The troubleshooting upload (SPEC §7, the guide's Management Agent): this node's alarms,
at or above the minimum push level and changed since they were last sent, go to the relay
(``POST /v1/alarms``) with the cluster ID, in batches that fit the relay's body limit.

Personal fields (``catalogue.PII_FIELDS``) travel only sealed with the PII support token
(``pii.seal``); while PII encryption is off they are left out. A relay that cannot be reached
raises ``PushNotificationServiceAccessTokenUnavailable``, a refused refresh token
``AccessTokenInvalid``; the next successful upload clears both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from prometheus_client import Counter

from ucpush.alarms import clear_alarm, raise_alarm
from ucpush.alarms.catalogue import PII_FIELDS, push_level_rank
from ucpush.alarms.pii import seal
from ucpush.alarms.store import AlarmRecord, SqlAlarmRepository
from ucpush.config import AlarmSettings
from ucpush.logging import get_logger
from ucpush.relay.client import RelayAuthError, RelayClient, RelayError

_log = get_logger("ucpush.alarms.uploader")

TOKEN_UNAVAILABLE = "PushNotificationServiceAccessTokenUnavailable"
TOKEN_INVALID = "AccessTokenInvalid"

UPLOADS = Counter(
    "ucpush_alarm_uploads", "Alarm upload attempts by result (ok, error, skipped)", ["result"]
)
UPLOADED_ALARMS = Counter("ucpush_alarms_uploaded", "Alarm records the relay accepted")


class UploadSource(Protocol):
    """What the uploader needs of the node's relay connection; ``ucpush.cloud``'s
    ``CloudConnection`` is one."""

    @property
    def cluster_id(self) -> str: ...

    @property
    def send_troubleshooting(self) -> bool: ...

    @property
    def pii_support_token(self) -> str: ...  # "" = PII encryption off

    def current_client(self) -> RelayClient | None: ...


@dataclass
class RelayTarget:
    """An ``UploadSource`` from plain values: a callable giving the current relay client."""

    client: Callable[[], RelayClient | None]
    cluster_id: str
    pii_support_token: str = ""
    send_troubleshooting: bool = True

    def current_client(self) -> RelayClient | None:
        return self.client()


@dataclass(frozen=True, slots=True)
class UploadResult:
    sent: int = 0
    error: str = ""  # why the upload failed ("" = it did not)
    skipped: str = ""  # why nothing was attempted

    @property
    def ok(self) -> bool:
        return not self.error and not self.skipped


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def upload_entry(record: AlarmRecord, pii_support_token: str) -> dict[str, Any]:
    """The wire form of one alarm; personal details sealed, or dropped without a token."""
    personal = {k: v for k, v in record.details.items() if k in PII_FIELDS}
    entry: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "severity": record.severity,
        "raised_at": _iso(record.raised_at),
        "last_raised_at": _iso(record.last_raised_at),
        "cleared_at": _iso(record.cleared_at),
        "count": record.count,
        "details": {k: v for k, v in record.details.items() if k not in PII_FIELDS},
    }
    if personal and pii_support_token:
        entry["pii"] = seal(personal, pii_support_token)
    return entry


def batches(
    entries: Sequence[tuple[AlarmRecord, dict[str, Any]]], limit_bytes: int
) -> Iterator[list[tuple[AlarmRecord, dict[str, Any]]]]:
    """Consecutive runs of entries whose JSON stays under ``limit_bytes`` (at least one entry
    each: a single alarm is bounded by the detail limits of ``raise_alarm``)."""
    batch: list[tuple[AlarmRecord, dict[str, Any]]] = []
    size = 0
    for pair in entries:
        entry_size = len(json.dumps(pair[1], separators=(",", ":"))) + 1
        if batch and size + entry_size > limit_bytes:
            yield batch
            batch, size = [], 0
        batch.append(pair)
        size += entry_size
    if batch:
        yield batch


class AlarmUploader:
    def __init__(
        self,
        repo: SqlAlarmRepository,
        settings: AlarmSettings,
        node: str,
        source: UploadSource,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.node = node
        self.source = source
        self._clock = clock

    async def upload(self) -> UploadResult:
        result = await self._upload()
        UPLOADS.labels("skipped" if result.skipped else "error" if result.error else "ok").inc()
        UPLOADED_ALARMS.inc(result.sent)
        return result

    async def _upload(self) -> UploadResult:
        if not self.source.send_troubleshooting:
            return UploadResult(skipped="troubleshooting upload is off")
        client = self.source.current_client()
        if client is None:
            return UploadResult(skipped="push notifications are not onboarded or are disabled")
        prefs = await self.repo.prefs(self._clock())
        level = prefs.min_push_level or self.settings.min_push_level
        records = await self.repo.pending_upload(self.node, push_level_rank(level))
        token = self.source.pii_support_token
        entries = [(record, upload_entry(record, token)) for record in records]
        # Room for the envelope (cluster id, node) within the relay's body limit.
        limit = self.settings.upload_batch_bytes - 1024
        sent = 0
        # With nothing to send, an empty batch still checks that the relay is reachable.
        for batch in list(batches(entries, limit)) or [[]]:
            body = {
                "cluster_id": self.source.cluster_id,
                "node": self.node,
                "alarms": [entry for _, entry in batch],
            }
            error = await self._send(client, body)
            if error:
                return UploadResult(sent, error=error)
            await self.repo.mark_uploaded([record for record, _ in batch], self._clock())
            sent += len(batch)
        clear_alarm(TOKEN_UNAVAILABLE)
        clear_alarm(TOKEN_INVALID)
        _log.info("alarms uploaded", sent=sent, level=level)
        return UploadResult(sent)

    async def _send(self, client: RelayClient, body: Mapping[str, Any]) -> str:
        cluster = self.source.cluster_id
        try:
            await client.upload_alarms(dict(body))
        except RelayAuthError as exc:
            raise_alarm(TOKEN_INVALID, cluster_id=cluster, detail=str(exc))
            return str(exc)
        except RelayError as exc:
            if exc.status == 401:
                raise_alarm(TOKEN_INVALID, cluster_id=cluster, detail=str(exc))
            elif exc.status >= 500:
                raise_alarm(TOKEN_UNAVAILABLE, cluster_id=cluster, detail=str(exc))
            _log.warning(
                "alarm upload refused", status=exc.status, error=exc.error, detail=exc.detail
            )
            return str(exc)
        except (httpx.HTTPError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise_alarm(TOKEN_UNAVAILABLE, cluster_id=cluster, detail=detail)
            return f"relay unreachable: {detail}"
        return ""
