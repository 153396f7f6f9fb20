"""A node's life in the cluster, over Redis (docs/cluster.md has the whole design).

* **Membership**: every ``heartbeat_seconds`` the node sets ``<prefix>:node:<name>`` (its SIP URI
  and LPNS URL) with a time to live of ``failure_timeout``; a node that stops (kill -9 included)
  drops out when its key expires. The **active node** of a group is its first member, in group
  order, whose key exists; this node names its own group's active node in call pushes
  (``on_active_node``), re-reading the group from the store at each heartbeat.
* **Shared bindings**: after a REGISTER changed an AOR here (in memory; the store is written
  behind), the node publishes the AOR's whole binding set on ``<prefix>:bindings``; the other
  nodes put that set in their ``LocationCache`` (memory only: the registering node writes the
  store). Carrying the bindings in the message makes them visible before the write-behind flush.
* **Local push mesh**: ``<prefix>:lpns:session:<device>`` names the node holding the device's
  LPNS session (refreshed every ``lpns.keepalive_seconds``, expiring after twice that), announced on
  ``<prefix>:lpns:sessions``; every node mirrors the map. A push for a session on another node
  is a request on ``<prefix>:lpns:req:<node>``, answered on ``<prefix>:lpns:rep:<asker>``, within
  the LPNS ack timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ucpush.cluster.sql import NodeGroup
from ucpush.config import ClusterSettings
from ucpush.logging import get_logger
from ucpush.lpns.protocol import PushType
from ucpush.lpns.service import LocalPushOutcome, LocalPushResult, LpnsService
from ucpush.store.repository import Binding, SipUser

log = get_logger("ucpush.cluster")

# Deletes the session key only if it still names this node (the device may have moved on).
_DELETE_IF_MINE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def node_name(settings: ClusterSettings) -> str:
    return settings.node_name or socket.gethostname()


@dataclass(frozen=True, slots=True)
class Member:
    """A live node as its heartbeat describes it."""

    name: str
    sip: str  # the URI pushes name as the node to register to
    lpns: str = ""


def active_member(group: NodeGroup, live: dict[str, Member]) -> Member | None:
    """The first live node of ``group`` in its order (primary, secondary, tertiary)."""
    for name in group.nodes:
        if name in live:
            return live[name]
    return None


async def live_members(client: aioredis.Redis, key_prefix: str) -> dict[str, Member]:
    """Every node of the cluster with a live heartbeat, by name."""
    keys = [k async for k in client.scan_iter(f"{key_prefix}:node:*", count=100)]
    values = await client.mget(keys) if keys else []
    live = {}
    for value in values:
        if value is not None:  # expired between the scan and the read
            member = Member(**json.loads(value))
            live[member.name] = member
    return live


# bindings on the wire


# Binding fields holding datetimes (ISO 8601 on the wire), read from the dataclass itself so a
# new timestamp field travels without a change here.
_TIME_FIELDS = frozenset(f.name for f in fields(Binding) if "datetime" in str(f.type))


def binding_to_json(binding: Binding) -> dict[str, Any]:
    values = asdict(binding)
    for name in _TIME_FIELDS:
        if values[name] is not None:
            values[name] = values[name].isoformat()
    values["path"] = list(binding.path)
    return values


def binding_from_json(values: dict[str, Any]) -> Binding:
    decoded = dict(values)
    for name in _TIME_FIELDS:
        if decoded.get(name) is not None:
            decoded[name] = datetime.fromisoformat(decoded[name])
    decoded["path"] = tuple(decoded["path"])
    return Binding(**decoded)


class SharedBindings(Protocol):
    """What the service needs of ``LocationCache``."""

    async def list_bindings(self, aor: str | None = None) -> list[Binding]: ...
    def replace_from_cluster(self, aor: str, bindings: Sequence[Binding]) -> None: ...


class ClusterService:
    """``start()`` joins (first heartbeat, subscriptions, mirrors loaded); ``stop()`` leaves at
    once (keys deleted) so the others fail over without waiting for ``failure_timeout``."""

    def __init__(
        self,
        settings: ClusterSettings,
        *,
        sip_uri: str,
        groups: Any,  # SqlClusterRepository: list_groups()
        on_active_node: Callable[[str], None],
        lpns: LpnsService | None = None,
        bindings: SharedBindings | None = None,
        lpns_url: str = "",
    ) -> None:
        self.settings = settings
        self.name = node_name(settings)
        self.me = Member(self.name, sip_uri, lpns_url)
        self.groups = groups
        self.on_active_node = on_active_node
        self.lpns = lpns
        self.bindings = bindings
        p = settings.key_prefix
        self._node_key = f"{p}:node:"
        self._bindings_channel = f"{p}:bindings"
        self._sessions_channel = f"{p}:lpns:sessions"
        self._session_key = f"{p}:lpns:session:"
        self._req_channel = f"{p}:lpns:req:"
        self._rep_channel = f"{p}:lpns:rep:"
        self.redis = aioredis.from_url(settings.redis_url)
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.live: dict[str, Member] = {}
        self.group: NodeGroup | None = None
        self.active: Member | None = None
        self.sessions: dict[str, str] = {}  # device id -> node holding its LPNS session
        self._replies: dict[str, asyncio.Future[LocalPushResult]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._delete_if_mine = self.redis.register_script(_DELETE_IF_MINE)
        self._session_changes: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()

    # life cycle

    async def start(self) -> None:
        await self._pubsub.subscribe(
            self._bindings_channel,
            self._sessions_channel,
            self._req_channel + self.name,
            self._rep_channel + self.name,
        )
        self._loops.append(asyncio.get_running_loop().create_task(self._listen()))
        await self._load_sessions()
        await self._heartbeat()
        self._loops.append(asyncio.get_running_loop().create_task(self._heartbeat_forever()))
        if self.lpns is not None:
            loop = asyncio.get_running_loop()
            self._loops.append(loop.create_task(self._refresh_sessions()))
            self._loops.append(loop.create_task(self._record_sessions()))
        log.info("cluster.joined", node=self.name, live=sorted(self.live), active=self.active)

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        self._loops.clear()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self._node_key + self.name)
            for device, holder in list(self.sessions.items()):
                if holder == self.name:
                    await self.session_closed(device)
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()
        await self.redis.aclose()
        log.info("cluster.left", node=self.name)

    async def __aenter__(self) -> ClusterService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # membership

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self._heartbeat()
            except (RedisError, OSError) as exc:
                # Redis away: this node keeps serving with the membership it last saw.
                log.warning("cluster.heartbeat_failed", error=str(exc))

    async def _heartbeat(self) -> None:
        ttl_ms = int(self.settings.failure_timeout * 1000)
        await self.redis.set(self._node_key + self.name, json.dumps(asdict(self.me)), px=ttl_ms)
        try:
            # Every beat (one small query): a group changed with the CLI applies at once.
            groups = await self.groups.list_groups()
            self.group = next((g for g in groups if self.name in g.nodes), None)
        except Exception as exc:  # the database briefly away: keep the group last read
            log.warning("cluster.groups_unreadable", error=repr(exc))
        self.live = await self.members()
        active = active_member(self.group, self.live) if self.group is not None else self.me
        active = active or self.me
        if active != self.active:
            log.info(
                "cluster.active_node", node=active.name, sip=active.sip, live=sorted(self.live)
            )
            self.active = active
            self.on_active_node(active.sip)

    async def members(self) -> dict[str, Member]:
        """Every node with a live heartbeat, by name."""
        return await live_members(self.redis, self.settings.key_prefix)

    # shared bindings

    async def bindings_changed(self, aor: str) -> None:
        """Tell the other nodes this AOR's bindings as this node now holds them."""
        if self.bindings is None:
            return
        current = await self.bindings.list_bindings(aor)
        message = {
            "from": self.name,
            "aor": aor,
            "bindings": [binding_to_json(b) for b in current],
        }
        try:
            await self.redis.publish(self._bindings_channel, json.dumps(message))
        except (RedisError, OSError) as exc:
            # The others still read the store when they start; live calls there miss it.
            log.warning("cluster.bindings_publish_failed", aor=aor, error=str(exc))

    def _apply_bindings(self, message: dict[str, Any]) -> None:
        if self.bindings is None or message["from"] == self.name:
            return
        bindings = [binding_from_json(b) for b in message["bindings"]]
        self.bindings.replace_from_cluster(str(message["aor"]), bindings)

    # local push mesh

    async def session_opened(self, device_id: str) -> None:
        self.sessions[device_id] = self.name
        ttl = int(2 * self._keepalive() * 1000)
        await self.redis.set(self._session_key + device_id, self.name, px=ttl)
        await self.redis.publish(
            self._sessions_channel, json.dumps({"device": device_id, "node": self.name})
        )

    async def session_closed(self, device_id: str) -> None:
        if self.sessions.get(device_id) == self.name:
            del self.sessions[device_id]
        if await self._delete_if_mine(keys=[self._session_key + device_id], args=[self.name]):
            await self.redis.publish(
                self._sessions_channel, json.dumps({"device": device_id, "node": None})
            )

    def on_lpns_session(self, device_id: str, opened: bool) -> None:
        """``LpnsService.on_session``: recorded in Redis in the background, in order (a
        reconnect closes the old session just before the new one opens)."""
        if opened:
            self.sessions[device_id] = self.name
        self._session_changes.put_nowait((device_id, opened))

    async def _record_sessions(self) -> None:
        while True:
            device_id, opened = await self._session_changes.get()
            try:
                if opened:
                    await self.session_opened(device_id)
                elif not self.lpns or not self.lpns.has_session(device_id):
                    await self.session_closed(device_id)
            except (RedisError, OSError) as exc:
                # The refresh loop writes the open ones again; a stale one expires.
                log.warning("cluster.session_record_failed", device_id=device_id, error=str(exc))

    def session_node(self, device_id: str) -> str | None:
        """The live node holding the device's local push session, if any."""
        holder = self.sessions.get(device_id)
        if holder is None or (holder != self.name and holder not in self.live):
            return None
        return holder

    async def deliver_remote(
        self, holder: str, device_id: str, push_type: PushType, payload: str
    ) -> LocalPushResult:
        """Ask ``holder`` to push over the device's session there; bounded by the ack timeout
        (the holder waits at most that long for the device, the answer has a little more)."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[LocalPushResult] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        request = {
            "id": request_id,
            "from": self.name,
            "device": device_id,
            "type": push_type,
            "payload": payload,
        }
        try:
            async with asyncio.timeout(self._ack_timeout() + 0.5):
                if not await self.redis.publish(self._req_channel + holder, json.dumps(request)):
                    return LocalPushResult(LocalPushOutcome.NO_SESSION, f"{holder} not listening")
                return await future
        except TimeoutError:
            return LocalPushResult(LocalPushOutcome.TIMEOUT, f"no answer from {holder}")
        except (RedisError, OSError) as exc:
            return LocalPushResult(LocalPushOutcome.ERROR, f"redis: {exc}")
        finally:
            self._replies.pop(request_id, None)

    async def _serve_remote(self, request: dict[str, Any]) -> None:
        assert self.lpns is not None
        result = await self.lpns.deliver(request["device"], request["type"], request["payload"])
        answer = {"id": request["id"], "outcome": result.outcome.value, "detail": result.detail}
        await self.redis.publish(self._rep_channel + request["from"], json.dumps(answer))

    def _settle(self, answer: dict[str, Any]) -> None:
        future = self._replies.get(answer["id"])
        if future is not None and not future.done():
            outcome = LocalPushOutcome(answer["outcome"])
            future.set_result(LocalPushResult(outcome, answer.get("detail", "")))

    async def _load_sessions(self) -> None:
        keys = [k async for k in self.redis.scan_iter(self._session_key + "*", count=1000)]
        values = await self.redis.mget(keys) if keys else []
        cut = len(self._session_key)
        for key, holder in zip(keys, values, strict=True):
            if holder is not None:
                self.sessions[key[cut:].decode()] = holder.decode()

    async def _refresh_sessions(self) -> None:
        assert self.lpns is not None
        while True:
            await asyncio.sleep(self._keepalive())
            mine = [d for d, holder in self.sessions.items() if holder == self.name]
            ttl = int(2 * self._keepalive() * 1000)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for device_id in mine:
                        pipe.set(self._session_key + device_id, self.name, px=ttl)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("cluster.session_refresh_failed", error=str(exc))

    def _keepalive(self) -> float:
        return self.lpns.settings.keepalive_seconds if self.lpns is not None else 120.0

    def _ack_timeout(self) -> float:
        return self.lpns.settings.ack_timeout if self.lpns is not None else 2.0

    # the subscriber

    async def _listen(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("cluster.subscriber_failed", error=str(exc))
                await asyncio.sleep(self.settings.heartbeat_seconds)
                continue
            if message is None:
                continue
            channel = message["channel"].decode()
            try:
                body = json.loads(message["data"])
                self._dispatch(channel, body)
            except (ValueError, KeyError, TypeError) as exc:
                # Another version or a stray publisher: never let it stop the subscriber.
                log.warning("cluster.bad_message", channel=channel, error=repr(exc))

    def _dispatch(self, channel: str, body: dict[str, Any]) -> None:
        if channel == self._bindings_channel:
            self._apply_bindings(body)
        elif channel == self._sessions_channel:
            device, holder = str(body["device"]), body["node"]
            if holder is None:
                if self.sessions.get(device) != self.name:
                    self.sessions.pop(device, None)
            else:
                self.sessions[device] = str(holder)
        elif channel == self._req_channel + self.name:
            if self.lpns is not None:
                self._spawn(self._serve_remote(body))
        elif channel == self._rep_channel + self.name:
            self._settle(body)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("cluster.task_failed", error=repr(task.exception()))


class MeshLocalPush:
    """The node's ``LpnsService`` seen through the mesh: ``has_session``/``deliver`` also cover
    sessions held by the other live nodes (what ``PushDispatcher`` asks of its ``lpns``)."""

    def __init__(self, lpns: LpnsService, cluster: ClusterService) -> None:
        self.lpns = lpns
        self.cluster = cluster

    def has_session(self, device_id: str) -> bool:
        return self.lpns.has_session(device_id) or self.cluster.session_node(device_id) is not None

    async def deliver(
        self, device_id: str, push_type: PushType, payload_jwe: str
    ) -> LocalPushResult:
        if self.lpns.has_session(device_id):
            return await self.lpns.deliver(device_id, push_type, payload_jwe)
        holder = self.cluster.session_node(device_id)
        if holder is None or holder == self.cluster.name:
            return LocalPushResult(LocalPushOutcome.NO_SESSION)
        return await self.cluster.deliver_remote(holder, device_id, push_type, payload_jwe)


class PublishingBindings:
    """The registrar's storage on a cluster node: the ``LocationCache`` it wraps, and after each
    saved change the AOR's bindings go to the other nodes."""

    def __init__(self, cache: Any, cluster: ClusterService) -> None:
        self.cache = cache
        self.cluster = cluster

    async def get_user(self, username: str, realm: str) -> SipUser:
        user: SipUser = await self.cache.get_user(username, realm)
        return user

    async def list_bindings(self, aor: str | None = None) -> list[Binding]:
        bindings: list[Binding] = await self.cache.list_bindings(aor)
        return bindings

    async def save_bindings(self, aor: str, upsert: list[Binding], remove: list[str]) -> None:
        await self.cache.save_bindings(aor, upsert, remove)
        await self.cluster.bindings_changed(aor)

    async def remove_expired(self, now: datetime) -> list[Binding]:
        # Every node sweeps its own memory by the same clock: nothing to tell the others.
        gone: list[Binding] = await self.cache.remove_expired(now)
        return gone
