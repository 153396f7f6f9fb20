"""Alarms (SPEC §7). For now an alarm is a structured log event ``alarm``; the alarm subsystem
(upload to the relay, minimum level, push frequency) will hook in behind ``raise_alarm``."""

from __future__ import annotations

from typing import Any, Literal

from ucpush.logging import get_logger

Severity = Literal["CRITICAL", "ALERT", "ERROR", "WARNING", "NOTICE", "INFO"]

_log = get_logger("ucpush.alarms")


def raise_alarm(name: str, severity: Severity, **details: Any) -> None:
    """Raise alarm ``name`` (e.g. ``LocalPushNotificationInvalidOAuthToken``); ``details`` must
    not carry payloads or secrets."""
    _log.warning("alarm", alarm=name, severity=severity, **details)
