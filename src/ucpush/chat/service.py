"""The chat push app server: XEP-0357 publishes in, message pushes out through the relay.

``ChatPushService.handle_publish`` is the whole decision for one publish (check the node and
secret, rate, device state, last-active-session rule, push, map the relay's outcome onto an
XMPP error); ``XmppComponent`` is the XEP-0114 connection that feeds it and answers.

Errors follow what the chat servers do with them (REFERENCE §4): ``wait`` for transient
trouble (relay or provider down, throttled, not onboarded) keeps the registration;
``cancel``/``auth`` (unknown node, wrong secret, signed-out device, dead token) makes
ejabberd drop it at once and Prosody after ``push_max_errors``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import httpx

from ucpush.alarms import raise_alarm
from ucpush.callpush.payload import PUBLIC_KEY, PUBLIC_KEY_ID
from ucpush.chat.metrics import (
    COUNTERS,
    EXPIRED_TARGET,
    INVALID_TARGET,
    PUSH_ENABLED_SESSIONS,
    PUSH_FAILED,
    PUSH_SUCCESS,
    ChatCounters,
    service_label,
)
from ucpush.chat.protocol import ErrorType, PresenceUpdate, Publish, StanzaError
from ucpush.chat.registration import secret_matches
from ucpush.chat.sessions import LastActiveSessions
from ucpush.config import ChatSettings
from ucpush.crypto import jwe
from ucpush.logging import get_logger
from ucpush.relay.client import RelayAuthError, RelayClient, RelayError
from ucpush.relay.providers.base import Outcome, Priority, PushType
from ucpush.store.repository import Device, EndUser, NotFound, PushState

_log = get_logger("ucpush.chat")


class ChatDirectory(Protocol):
    """The part of ``SigninRepository`` chat push reads and writes."""

    async def get_device(self, device_id: str) -> Device: ...
    async def get_user(self, user_id: str) -> EndUser: ...
    async def set_push_state(self, device_id: str, state: PushState, now: datetime) -> None: ...


@dataclass(frozen=True, slots=True)
class PushDone:
    """One publish handled: for logs, tests and the benchmark."""

    node: str
    pushed: bool
    received_at: float  # loop clock, when the publish arrived
    done_at: float  # loop clock, when the relay answered (or the decision was made)
    outcome: str  # relay outcome, "suppressed", or the XMPP error condition answered
    sent_at: float = 0.0  # loop clock, when the push request went to the relay


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


_WAIT_INTERNAL = StanzaError(ErrorType.WAIT, "internal-server-error", "push provider trouble")


@dataclass
class ChatPushService:
    settings: ChatSettings
    directory: ChatDirectory
    relay: Callable[[], RelayClient | None]
    node_key: bytes
    counters: ChatCounters = COUNTERS
    on_push_done: Callable[[PushDone], None] | None = None
    sessions: LastActiveSessions = field(init=False)
    # Push-enabled sessions: node → subscriber service (for the per-service gauge).
    _known: dict[str, str] = field(init=False, default_factory=dict)
    _buckets: dict[str, _Bucket] = field(init=False, default_factory=dict)
    _usernames: dict[str, str] = field(init=False, default_factory=dict)
    _in_flight: int = field(init=False, default=0)
    # Pushes waiting here cost nothing; queued inside httpx's pool, every request rescans
    # the queue (measured in bench/chat_push.py: throughput collapses under load).
    _relay_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = LastActiveSessions(self.settings.inactive_after)
        self._relay_slots = asyncio.Semaphore(self.settings.relay_concurrency)

    # call node and presence inputs

    def set_in_call(self, user: str, in_call: bool) -> None:
        """The call node says ``user`` (sign-in user id or bare JID) is in an active call:
        message pushes then go to the mobile even when the desktop is active (SPEC §4)."""
        self.sessions.set_in_call(user, in_call)

    def presence(self, update: PresenceUpdate) -> None:
        self.sessions.presence(update, time.time())
        if not update.available and update.resource in self._known:
            # The device's session ended (sign-out or hibernation timeout): no longer enabled.
            self._forget(update.resource)

    @property
    def enabled_sessions(self) -> dict[str, str]:
        """node → subscriber service of every push-enabled session known."""
        return dict(self._known)

    # publishes

    async def handle_publish(self, publish: Publish, sender: str) -> PushDone:
        """Push for ``publish`` (from ``sender``, the chat server); raises ``StanzaError``
        with the answer when it is refused or fails."""
        loop = asyncio.get_running_loop()
        received = loop.time()
        if not self._from_our_server(sender):
            raise StanzaError(ErrorType.AUTH, "forbidden", "publisher not allowed")
        if publish.secret is None or not secret_matches(
            self.node_key, publish.node, publish.secret
        ):
            INVALID_TARGET.inc()
            # Checked first, without touching the node's state: whoever guesses node names
            # learns nothing and cannot use up a real registration's rate.
            raise StanzaError(ErrorType.AUTH, "forbidden", "wrong or missing secret")
        if self._in_flight >= self.settings.max_in_flight or not self._take_token(
            publish.node, received
        ):
            raise StanzaError(ErrorType.WAIT, "resource-constraint", "too many publishes")
        self._in_flight += 1
        try:
            return await self._publish(publish, received)
        except StanzaError as error:
            now = loop.time()
            self._done(PushDone(publish.node, False, received, now, error.condition, now))
            raise
        finally:
            self._in_flight -= 1

    async def _publish(self, publish: Publish, received: float) -> PushDone:
        loop = asyncio.get_running_loop()
        device = await self._device(publish)
        if self.settings.last_active_session and publish.has_message:
            bare = await self._bare_jid(device.user_id)
            if bare and not self.sessions.should_push(
                bare, device.id, time.time(), user_id=device.user_id
            ):
                _log.info("chat push suppressed", node=publish.node, reason="other session active")
                return self._done(
                    PushDone(publish.node, False, received, loop.time(), "suppressed", received)
                )
        first = publish.node not in self._known
        self._remember(device)
        if first:
            self.counters.enable_requests.inc(device.service)
        sent = loop.time()
        outcome = await self._push(device, publish)
        return self._done(PushDone(publish.node, True, received, loop.time(), outcome.value, sent))

    async def _device(self, publish: Publish) -> Device:
        try:
            device = await self.directory.get_device(publish.node)
        except NotFound:
            INVALID_TARGET.inc()
            raise StanzaError(ErrorType.CANCEL, "item-not-found", "unknown node") from None
        if device.push_state is not PushState.ACTIVE or not device.push_token:
            EXPIRED_TARGET.inc()
            self._forget(publish.node)
            raise StanzaError(ErrorType.CANCEL, "item-not-found", "device signed out")
        return device

    async def _bare_jid(self, user_id: str) -> str:
        username = self._usernames.get(user_id)
        if username is None:
            try:
                username = (await self.directory.get_user(user_id)).username
            except NotFound:
                return ""
            self._usernames[user_id] = username
        return f"{username}@{self.settings.user_domain}".lower()

    async def _push(self, device: Device, publish: Publish | None) -> Outcome:
        """Send one push (``publish`` None: the terminated push); raise on failure."""
        kind = PushType.TERMINATED if publish is None else PushType.MESSAGE
        silent = publish is not None and not publish.has_message
        tracking_id = uuid.uuid4().hex
        payload = self._payload(device, publish, kind, tracking_id)
        relay = self.relay()
        if relay is None:
            self._failed(device)
            raise_alarm("XCPConfigMgrAccessTokenIsNull", "CRITICAL", node=device.id)
            raise StanzaError(ErrorType.WAIT, "service-unavailable", "push relay not onboarded")
        try:
            async with self._relay_slots:
                result = await relay.send_encrypted(
                    target=device.push_token,
                    service=device.service,
                    push_type=kind,
                    jwe_payload=payload,
                    priority=Priority.NORMAL if silent else Priority.HIGH,
                    tracking_id=tracking_id,
                )
        except RelayAuthError as exc:
            self._failed(device)
            raise_alarm("PushNotificationFailedInvalidAccessToken", "CRITICAL", error=exc.error)
            raise _WAIT_INTERNAL from None
        except (RelayError, httpx.HTTPError, OSError, ValueError) as exc:
            self._failed(device)
            _log.warning("chat push relay failed", node=device.id, error=str(exc), tid=tracking_id)
            raise StanzaError(
                ErrorType.WAIT, "remote-server-timeout", "relay unreachable"
            ) from None
        if result.outcome is Outcome.DELIVERED:
            PUSH_SUCCESS.inc()
            if publish is not None:
                counter = self.counters.sent_silent if silent else self.counters.sent_disconnected
                counter.inc(device.service)
            _log.info("chat push", node=device.id, type=kind.value, tid=tracking_id)
            return result.outcome
        self._failed(device)
        if result.outcome is Outcome.UNREGISTERED:
            EXPIRED_TARGET.inc()
            await self.directory.set_push_state(
                device.id, PushState.PAUSED_INVALID_TOKEN, datetime.now(UTC)
            )
            self._forget(device.id)
            raise_alarm(
                "PushNotificationFailedInvalidDeviceToken",
                "CRITICAL",
                node=device.id,
                service=device.service,
                paused=True,
                tid=tracking_id,
            )
            raise StanzaError(ErrorType.CANCEL, "item-not-found", "device token expired")
        if result.outcome is Outcome.THROTTLED:
            raise StanzaError(ErrorType.WAIT, "resource-constraint", "provider throttled")
        if result.outcome is Outcome.BAD_DEVICE_TOKEN:
            # Usually a sandbox/production mix-up the operator fixes: keep the registration.
            raise_alarm(
                "PushNotificationFailedInvalidDeviceToken",
                "CRITICAL",
                node=device.id,
                service=device.service,
                paused=False,
                reason=result.reason or "BadDeviceToken",
                tid=tracking_id,
            )
        elif result.outcome is Outcome.REJECTED:
            raise_alarm(
                "PushNotificationFailed",
                "CRITICAL",
                node=device.id,
                service=device.service,
                reason=result.reason or "",
                tid=tracking_id,
            )
        raise _WAIT_INTERNAL

    def _payload(
        self, device: Device, publish: Publish | None, kind: PushType, tracking_id: str
    ) -> str:
        fields: dict[str, object] = {"type": kind.value}
        if publish is not None:
            fields["count"] = publish.message_count or (1 if publish.has_message else 0)
            if device.push_key:
                # Sender and body only inside a payload the device alone can open.
                if self.settings.include_sender and publish.sender:
                    fields["sender"] = publish.sender
                if self.settings.include_body and publish.body:
                    fields["body"] = publish.body
        fields["tracking_id"] = tracking_id
        fields["timestamp"] = int(time.time())
        plaintext = json.dumps(fields, separators=(",", ":")).encode()
        if device.push_key:
            return jwe.encrypt(plaintext, device.push_key, kid=device.push_key_id or None)
        return jwe.encrypt(plaintext, PUBLIC_KEY, kid=PUBLIC_KEY_ID)

    def _from_our_server(self, sender: str) -> bool:
        # XEP-0357 §8: publish only from the chat server (its domain or, before v0.3, a
        # user's bare JID on it).
        domain = sender.partition("/")[0].rpartition("@")[2].lower()
        return domain == self.settings.user_domain.lower()

    def _take_token(self, node: str, now: float) -> bool:
        rate, burst = self.settings.node_rate, float(self.settings.node_burst)
        bucket = self._buckets.get(node)
        if bucket is None:
            if len(self._buckets) > 100_000:
                self._buckets.clear()  # bounded memory under a flood of made-up nodes
            bucket = self._buckets[node] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            self.counters.errors.inc(self._known.get(node, "unknown"))
            return False
        bucket.tokens -= 1.0
        return True

    def _failed(self, device: Device) -> None:
        PUSH_FAILED.inc()
        self.counters.errors.inc(device.service)

    def _done(self, done: PushDone) -> PushDone:
        if self.on_push_done is not None:
            self.on_push_done(done)
        return done

    def _remember(self, device: Device) -> None:
        known = self._known.get(device.id)
        if known == device.service:
            return
        if known is not None:
            PUSH_ENABLED_SESSIONS.labels(service_label(known)).dec()
        PUSH_ENABLED_SESSIONS.labels(service_label(device.service)).inc()
        self._known[device.id] = device.service

    def _forget(self, node: str) -> None:
        known = self._known.pop(node, None)
        if known is not None:
            PUSH_ENABLED_SESSIONS.labels(service_label(known)).dec()

    # shutdown

    async def send_terminated(self) -> int:
        """Graceful shutdown (SPEC §4): a 'terminated' push to every push-enabled session;
        returns how many were delivered."""
        nodes = list(self._known)
        results = await asyncio.gather(
            *(self._terminate(node) for node in nodes), return_exceptions=True
        )
        delivered = sum(1 for r in results if r is True)
        _log.info("chat push terminated pushes", sessions=len(nodes), delivered=delivered)
        return delivered

    async def _terminate(self, node: str) -> bool:
        try:
            device = await self.directory.get_device(node)
        except NotFound:
            self._forget(node)
            return False
        if device.push_state is not PushState.ACTIVE or not device.push_token:
            self._forget(node)
            return False
        try:
            await self._push(device, None)
        except StanzaError:
            return False
        self._forget(node)
        return True
