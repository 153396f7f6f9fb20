"""Local APNs simulator speaking Apple's HTTP/2 provider API (token authentication).

``POST /3/device/<hex token>`` is validated like APNs does, with Apple's status codes and
``reason`` strings, so an unchanged APNs client (httpx with ``http2=True``) can be pointed at
``sim.url``. Accepted pushes are recorded in ``sim.delivered``.

Control API (same server, JSON bodies, for tests and benchmarks running ``ucpush sim`` out of
process; never subject to faults):

- ``GET /_sim/health`` -> ``{"status": "ok"}``
- ``GET /_sim/delivered`` -> list of ``{"token", "topic", "push_type", "priority",
  "expiration", "collapse_id", "apns_id", "payload" (base64), "environment", "received_at"}``
- ``DELETE /_sim/delivered`` -> 204, forgets recorded pushes
- ``POST /_sim/devices`` ``{"token", "topic", "environment"?}`` -> 204 (environment defaults to
  the simulator's)
- ``DELETE /_sim/devices/<token>`` (optional ``?timestamp_ms=<ms>``) -> 204; later pushes get
  410 Unregistered
- ``POST /_sim/keys`` ``{"team_id", "key_id", "public_key_pem", "topics"?}`` -> 204
- ``POST /_sim/faults`` ``{"kind": "status"|"latency"|"reset"|"goaway", "status", "reason",
  "count", "delay", "retry_after"}`` -> 204; ``DELETE /_sim/faults`` clears the queue

Errors in control requests answer 400 ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import re
import ssl
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ucpush.sim.common import (
    Clock,
    Fault,
    SimulatorBase,
    json_response,
    parse_json_body,
    require_object,
    require_str,
)
from ucpush.sim.h2server import Request, Response

Environment = Literal["production", "sandbox"]
ENVIRONMENTS: tuple[str, ...] = ("production", "sandbox")

DEVICE_PREFIX = "/3/device/"
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
TOKEN_MAX_AGE = 3600  # s; older -> ExpiredProviderToken
TOKEN_MIN_REFRESH = 1200  # s; a connection changing its token sooner -> 429
# Push types whose topic must carry a suffix after the bundle ID.
TOPIC_SUFFIXES = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "liveactivity": ".push-type.liveactivity",
    "location": ".location-query",
    "pushtotalk": ".voip-ptt",
}
PUSH_TYPES = frozenset({"alert", "background", "mdm", *TOPIC_SUFFIXES})
PRIORITIES = {"10": 10, "5": 5, "1": 1}
FAULT_REASONS = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}

_HEX = re.compile(r"[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*")
_EXPIRATION = re.compile(r"[0-9]{1,19}")
# Tokens already verified (or rejected): verifying ES256 per request would dominate the hot path.
_TOKEN_CACHE_SIZE = 4096


def base_topic(topic: str) -> str:
    """The bundle ID of ``topic``, without a push-type suffix such as ``.voip``."""
    for suffix in TOPIC_SUFFIXES.values():
        if topic.endswith(suffix):
            return topic[: -len(suffix)]
    return topic


@dataclass(slots=True)
class Device:
    topic: str  # bundle ID
    environment: str
    unregistered_at_ms: int | None = None


class DeviceRegistry:
    """Device tokens known to APNs; share one between a production and a sandbox simulator."""

    def __init__(self) -> None:
        self._devices: dict[str, Device] = {}

    def register(self, token_hex: str, topic: str, environment: str) -> None:
        if environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {ENVIRONMENTS}")
        if not _HEX.fullmatch(token_hex):
            raise ValueError("token must be hexadecimal")
        if not _TOPIC.fullmatch(topic):
            raise ValueError("topic must be a bundle ID")
        self._devices[token_hex.lower()] = Device(base_topic(topic), environment)

    def unregister(self, token_hex: str, timestamp_ms: int) -> None:
        device = self._devices.get(token_hex.lower())
        if device is None:
            raise ValueError("unknown device token")
        device.unregistered_at_ms = timestamp_ms

    def get(self, token_hex: str) -> Device | None:
        return self._devices.get(token_hex.lower())


@dataclass(frozen=True, slots=True)
class ApnsDelivery:
    token: str
    topic: str
    push_type: str
    priority: int
    expiration: int | None
    collapse_id: str | None
    apns_id: str
    payload: bytes  # exactly as received
    environment: str
    received_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "topic": self.topic,
            "push_type": self.push_type,
            "priority": self.priority,
            "expiration": self.expiration,
            "collapse_id": self.collapse_id,
            "apns_id": self.apns_id,
            "payload": base64.b64encode(self.payload).decode(),
            "environment": self.environment,
            "received_at": self.received_at,
        }


@dataclass(frozen=True, slots=True)
class _SigningKey:
    key: ec.EllipticCurvePublicKey
    topics: frozenset[str] | None  # None: any topic


class _Rejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


class ApnsSimulator(SimulatorBase):
    def __init__(
        self,
        environment: Environment = "production",
        registry: DeviceRegistry | None = None,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        if environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {ENVIRONMENTS}")
        # Body cap above the VoIP limit so oversized payloads still get Apple's 413 answer.
        super().__init__(ssl_context, host, port, clock, max_body=4 * MAX_VOIP_PAYLOAD)
        self.environment = environment
        self.registry = registry if registry is not None else DeviceRegistry()
        self.delivered: list[ApnsDelivery] = []
        self._keys: dict[tuple[str, str], _SigningKey] = {}
        # jwt -> (team_id, iat) or the rejection reason
        self._token_cache: dict[str, tuple[str, int] | str] = {}

    # -- set-up API -------------------------------------------------------------------

    def add_signing_key(
        self,
        team_id: str,
        key_id: str,
        public_key_pem: bytes,
        topics: Iterable[str] | None = None,
    ) -> None:
        """Trust ``public_key_pem`` (P-256) for tokens with ``iss=team_id``, ``kid=key_id``.

        ``topics`` (bundle IDs) restricts the team's topics; others get 400 TopicDisallowed.
        """
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError("APNs signing keys are P-256 EC keys")
        allowed = frozenset(base_topic(t) for t in topics) if topics is not None else None
        self._keys[(team_id, key_id)] = _SigningKey(key, allowed)
        self._token_cache.clear()

    def register_device(
        self, token_hex: str, topic: str, environment: Environment | None = None
    ) -> None:
        self.registry.register(token_hex, topic, environment or self.environment)

    def unregister_device(self, token_hex: str, timestamp_ms: int | None = None) -> None:
        if timestamp_ms is None:
            timestamp_ms = int(self.clock() * 1000)
        self.registry.unregister(token_hex, timestamp_ms)

    def clear_delivered(self) -> None:
        self.delivered.clear()

    # -- push handling ----------------------------------------------------------------

    def _is_push(self, request: Request) -> bool:
        return True

    def _handle(self, request: Request) -> Response:
        apns_id = request.header("apns-id")
        if apns_id is None or not _UUID.fullmatch(apns_id):
            apns_id = str(uuid.uuid4())
        try:
            delivery = self._validate(request, apns_id)
        except _Rejected as rejected:
            body: dict[str, Any] = {"reason": rejected.reason}
            if rejected.status == 410:
                device = self.registry.get(request.path[len(DEVICE_PREFIX) :])
                assert device is not None and device.unregistered_at_ms is not None
                body["timestamp"] = device.unregistered_at_ms
            return json_response(rejected.status, body, [("apns-id", apns_id)])
        self.delivered.append(delivery)
        headers = [("apns-id", apns_id)]
        if self.environment == "sandbox":
            headers.append(("apns-unique-id", str(uuid.uuid4())))
        return Response(200, headers)

    def _validate(self, request: Request, apns_id: str) -> ApnsDelivery:
        if request.method != "POST":
            raise _Rejected(405, "MethodNotAllowed")
        if not request.path.startswith(DEVICE_PREFIX):
            raise _Rejected(404, "BadPath")
        token = request.path[len(DEVICE_PREFIX) :]
        if "/" in token:
            raise _Rejected(404, "BadPath")
        if not token:
            raise _Rejected(400, "MissingDeviceToken")

        headers: dict[str, str] = {}
        for name, value in request.headers:
            if name.startswith("apns-") or name == "authorization":
                if name in headers:
                    raise _Rejected(400, "DuplicateHeaders")
                headers[name] = value

        team_id = self._authenticate(request, headers.get("authorization"))

        topic = headers.get("apns-topic")
        if topic is None:
            raise _Rejected(400, "MissingTopic")
        if not _TOPIC.fullmatch(topic):
            raise _Rejected(400, "BadTopic")
        bundle = base_topic(topic)
        allowed = self._team_topics(team_id)
        if allowed is not None and bundle not in allowed:
            raise _Rejected(400, "TopicDisallowed")

        push_type = headers.get("apns-push-type", "alert")
        if push_type not in PUSH_TYPES:
            raise _Rejected(400, "InvalidPushType")
        suffix = TOPIC_SUFFIXES.get(push_type)
        if (suffix is not None and not topic.endswith(suffix)) or (
            suffix is None and bundle != topic
        ):
            raise _Rejected(400, "InvalidPushType")

        priority = PRIORITIES.get(headers.get("apns-priority", "10"))
        if priority is None:
            raise _Rejected(400, "BadPriority")

        expiration_header = headers.get("apns-expiration")
        expiration = None
        if expiration_header is not None:
            if not _EXPIRATION.fullmatch(expiration_header):
                raise _Rejected(400, "BadExpirationDate")
            expiration = int(expiration_header)

        collapse_id = headers.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID:
            raise _Rejected(400, "BadCollapseId")

        message_id = headers.get("apns-id")
        if message_id is not None and message_id != apns_id:
            raise _Rejected(400, "BadMessageId")

        payload = request.body
        if not payload:
            raise _Rejected(400, "PayloadEmpty")
        if len(payload) > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
            raise _Rejected(413, "PayloadTooLarge")

        if not _HEX.fullmatch(token):
            raise _Rejected(400, "BadDeviceToken")
        device = self.registry.get(token)
        if device is None or device.environment != self.environment:
            raise _Rejected(400, "BadDeviceToken")
        if device.topic != bundle:
            raise _Rejected(400, "DeviceTokenNotForTopic")
        if device.unregistered_at_ms is not None:
            raise _Rejected(410, "Unregistered")

        return ApnsDelivery(
            token=token.lower(),
            topic=topic,
            push_type=push_type,
            priority=priority,
            expiration=expiration,
            collapse_id=collapse_id,
            apns_id=apns_id,
            payload=payload,
            environment=self.environment,
            received_at=self.clock(),
        )

    def _authenticate(self, request: Request, authorization: str | None) -> str:
        """Check the provider token; return its team ID."""
        if not authorization:
            raise _Rejected(403, "MissingProviderToken")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Rejected(403, "InvalidProviderToken")
        token = token.strip()
        verified = self._token_cache.get(token)
        if verified is None:
            verified = self._verify(token)
            if len(self._token_cache) >= _TOKEN_CACHE_SIZE:
                self._token_cache.clear()
            self._token_cache[token] = verified
        if isinstance(verified, str):
            raise _Rejected(403, verified)
        team_id, iat = verified
        now = self.clock()
        if now - iat > TOKEN_MAX_AGE:
            raise _Rejected(403, "ExpiredProviderToken")
        # APNs throttles connections that switch tokens more often than every 20 minutes.
        state = request.connection_state
        current = state.get("apns_token")
        if current != token:
            if current is not None and now - state["apns_token_since"] < TOKEN_MIN_REFRESH:
                raise _Rejected(429, "TooManyProviderTokenUpdates")
            state["apns_token"] = token
            state["apns_token_since"] = now
        return team_id

    def _verify(self, token: str) -> tuple[str, int] | str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        if header.get("alg") != "ES256" or not isinstance(header.get("kid"), str):
            return "InvalidProviderToken"
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        team_id = unverified.get("iss")
        signing_key = self._keys.get((team_id, header["kid"])) if isinstance(team_id, str) else None
        if signing_key is None:
            return "InvalidProviderToken"
        try:
            claims = jwt.decode(
                token,
                signing_key.key,
                algorithms=["ES256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        iat = claims.get("iat")
        if not isinstance(iat, int) or isinstance(iat, bool):
            return "InvalidProviderToken"
        return team_id, iat

    def _team_topics(self, team_id: str) -> frozenset[str] | None:
        topics: set[str] = set()
        for (team, _key_id), key in self._keys.items():
            if team == team_id:
                if key.topics is None:
                    return None
                topics |= key.topics
        return frozenset(topics)

    def _fault_response(self, request: Request, fault: Fault) -> Response:
        apns_id = request.header("apns-id") or str(uuid.uuid4())
        reason = fault.reason or FAULT_REASONS.get(fault.status, "InternalServerError")
        headers = [("apns-id", apns_id)]
        if fault.retry_after is not None:
            headers.append(("retry-after", str(fault.retry_after)))
        return json_response(fault.status, {"reason": reason}, headers)

    def _oversize(self, request: Request) -> Response:
        apns_id = request.header("apns-id") or str(uuid.uuid4())
        return json_response(413, {"reason": "PayloadTooLarge"}, [("apns-id", apns_id)])

    # -- control API ------------------------------------------------------------------

    def _delivered_json(self) -> list[dict[str, Any]]:
        return [delivery.to_json() for delivery in self.delivered]

    def _control_extra(self, request: Request, route: str) -> Response:
        if route == "devices" and request.method == "POST":
            data = require_object(parse_json_body(request))
            environment = data.get("environment") or self.environment
            self.registry.register(
                require_str(data, "token"), require_str(data, "topic"), environment
            )
            return Response(204)
        if route.startswith("devices/") and request.method == "DELETE":
            token, _, query = route[len("devices/") :].partition("?")
            timestamp = parse_qs(query).get("timestamp_ms")
            self.unregister_device(unquote(token), int(timestamp[0]) if timestamp else None)
            return Response(204)
        if route == "keys" and request.method == "POST":
            data = require_object(parse_json_body(request))
            topics = data.get("topics")
            if topics is not None and not (
                isinstance(topics, list) and all(isinstance(t, str) for t in topics)
            ):
                raise ValueError("'topics' must be a list of strings")
            self.add_signing_key(
                require_str(data, "team_id"),
                require_str(data, "key_id"),
                require_str(data, "public_key_pem").encode(),
                topics,
            )
            return Response(204)
        return json_response(404, {"error": "unknown control endpoint"})
