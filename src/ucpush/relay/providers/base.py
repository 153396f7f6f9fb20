"""The one small interface every push provider plug-in implements (APNs, FCM; local push later).

A provider takes a ``ProviderPush`` that the relay has already validated (the payload is an
opaque compact JWE the relay never opens) and returns a ``ProviderResult`` with a typed
``Outcome``. Providers own their connections, credentials and retry policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ucpush.store.repository import ProviderApp


class PushType(StrEnum):
    VOIP = "voip"
    MESSAGE = "message"
    MISSED_CALL = "missed-call"
    CANCEL = "cancel"
    TERMINATED = "terminated"


class Priority(StrEnum):
    HIGH = "high"  # APNs 10, FCM high
    NORMAL = "normal"  # APNs 5, FCM normal


class Outcome(StrEnum):
    DELIVERED = "delivered"
    # Provider says the token is dead (APNs 410, FCM UNREGISTERED): pause the device.
    UNREGISTERED = "unregistered"
    # APNs 400 BadDeviceToken / FCM INVALID_ARGUMENT on the token: usually a sandbox/production
    # mix-up, so it is reported apart and never treated as unregistered.
    BAD_DEVICE_TOKEN = "bad_device_token"
    # The provider refused the request for a reason the caller or operator must fix
    # (topic, payload, credentials); ``reason`` carries the provider's code.
    REJECTED = "rejected"
    THROTTLED = "throttled"  # 429; ``retry_after`` set
    PROVIDER_DOWN = "provider_down"  # 5xx / unreachable after retries


@dataclass(frozen=True, slots=True)
class ProviderPush:
    app: ProviderApp
    target: str  # device token / registration token
    push_type: PushType
    priority: Priority
    payload: str  # compact JWE, opaque
    tracking_id: str
    expiration: int | None = None  # absolute epoch seconds; None = provider default
    collapse_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderResult:
    outcome: Outcome
    status: int | None = None  # provider HTTP status of the last attempt
    reason: str | None = None  # provider reason / error code
    provider_id: str | None = None  # apns-id or FCM message name
    unregistered_at: int | None = None  # APNs 410 timestamp (ms since epoch)
    retry_after: float | None = None  # seconds
    attempts: int = 1


class PayloadTooLarge(ValueError):
    """The provider request body would exceed the provider's limit; raised before sending."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"provider payload is {size} bytes, limit is {limit}")
        self.size = size
        self.limit = limit


class Provider(Protocol):
    name: str  # "apns" | "fcm"

    async def send(self, push: ProviderPush) -> ProviderResult: ...

    async def aclose(self) -> None: ...
