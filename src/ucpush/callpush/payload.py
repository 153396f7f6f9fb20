"""What a call push carries (SPEC §2): JSON, sealed as a compact JWE (dir, A256GCM) with the
device's push key and key id.

Fields: ``type`` (call, call-message, missed-call, cancel), ``reason`` (cancel only),
``call_id``, ``caller_name`` / ``caller_number`` (the caller's external presentation when one
is configured), ``hunt_pilot``, ``active_node`` (SIP URI of the node the device must register
to, so it skips a failed node at once), ``tracking_id`` and ``timestamp`` (epoch seconds).

A device that registered no push key cannot open a payload, and PII must never travel in
the clear. By default (``PayloadPolicy.pii_free_without_key``) such a device still gets a
payload, stripped to ``type``, ``reason``, ``call_id``, ``active_node``, ``tracking_id`` and
``timestamp``: enough to wake, register and match the call. The relay only accepts JWE, so
that payload is sealed with the well-known ``PUBLIC_KEY`` (anyone can open it, which is why
it holds nothing personal). The choice is logged once per device (``pii_free_push``); turning
the flag off means such devices get no push at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ucpush.callpush.engine import InviteSummary, SendPush
from ucpush.crypto import jwe
from ucpush.logging import get_logger

# All-zero AES key for PII-free payloads to keyless devices (see the module docstring).
PUBLIC_KEY = bytes(jwe.KEY_BYTES)
PUBLIC_KEY_ID = "public"

_log = get_logger("ucpush.callpush")


@dataclass(frozen=True, slots=True)
class PayloadPolicy:
    # Keyless devices: send a PII-free payload (True) or nothing (False).
    pii_free_without_key: bool = True


def payload_fields(
    invite: InviteSummary,
    push: SendPush,
    *,
    active_node: str,
    tracking_id: str,
    timestamp: float,
    pii: bool = True,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": push.kind.value}
    if push.reason is not None:
        fields["reason"] = push.reason.value
    fields["call_id"] = invite.call_id
    if pii:
        fields["caller_name"] = invite.presentation_name or invite.caller_name
        fields["caller_number"] = invite.presentation_number or invite.caller_number
        if invite.hunt_pilot:
            fields["hunt_pilot"] = invite.hunt_pilot
    fields["active_node"] = active_node
    fields["tracking_id"] = tracking_id
    fields["timestamp"] = int(timestamp)
    return fields


def seal(fields: dict[str, Any], key: bytes, key_id: str | None) -> str:
    return jwe.encrypt(json.dumps(fields, separators=(",", ":")).encode(), key, kid=key_id)


class PayloadBuilder:
    """Builds sealed payloads for one node; ``active_node`` may be updated when the node
    group's active member changes."""

    def __init__(
        self,
        active_node: str,
        policy: PayloadPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.active_node = active_node
        self.policy = policy or PayloadPolicy()
        self._clock = clock
        self._pii_free_logged: set[str] = set()

    def build(
        self,
        invite: InviteSummary,
        push: SendPush,
        *,
        key: bytes,
        key_id: str,
        tracking_id: str,
    ) -> str | None:
        """The sealed payload for the device ``push`` names, or None when policy says the
        device gets no push (keyless with ``pii_free_without_key`` off)."""
        if not key:
            if not self.policy.pii_free_without_key:
                return None
            if push.device_id not in self._pii_free_logged:
                self._pii_free_logged.add(push.device_id)
                _log.info("pii_free_push", device_id=push.device_id, reason="no push key")
        fields = payload_fields(
            invite,
            push,
            active_node=self.active_node,
            tracking_id=tracking_id,
            timestamp=self._clock(),
            pii=bool(key),
        )
        if not key:
            return seal(fields, PUBLIC_KEY, PUBLIC_KEY_ID)
        return seal(fields, key, key_id or None)
