"""Alarms (SPEC §7): raised and cleared where the condition is detected.

``raise_alarm(name, **details)`` and ``clear_alarm(name, **key)`` are synchronous and cheap:
they check the name against the catalogue (an unknown name is a programming error), log, and
hand the event to the running ``AlarmCenter`` (``ucpush.alarms.center``), which stores it
(active alarms, bounded history) and uploads it to the relay. Without a center (CLI, tests of
other components) an alarm is only logged.

An alarm instance is named by its catalogue name plus the values of the definition's key
fields (e.g. ``device_id``): ``clear_alarm`` takes the same key fields as keyword arguments.
Details must not carry payloads or secrets; fields in ``catalogue.PII_FIELDS`` are uploaded
only encrypted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ucpush.alarms.catalogue import (
    CATALOGUE,
    AlarmDefinition,
    Severity,
    UnknownAlarm,
    definition,
)
from ucpush.logging import get_logger

__all__ = [
    "CATALOGUE",
    "AlarmEvent",
    "Severity",
    "UnknownAlarm",
    "clear_alarm",
    "raise_alarm",
]

_log = get_logger("ucpush.alarms")
_MAX_DETAIL_CHARS = 256
_MAX_DETAILS = 16
_RESERVED = frozenset({"alarm", "severity", "event", "level", "timestamp", "logger"})

Detail = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One raise (``raised``) or clear of an alarm instance."""

    name: str
    severity: Severity
    key: str
    raised: bool
    details: Mapping[str, Detail] = field(default_factory=dict)


class AlarmSink(Protocol):
    def submit(self, event: AlarmEvent) -> None: ...


_sinks: list[AlarmSink] = []


def install_sink(sink: AlarmSink) -> None:
    """Route events to ``sink`` (the newest installed wins) until ``remove_sink``."""
    _sinks.append(sink)


def remove_sink(sink: AlarmSink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def _clean(details: Mapping[str, Any]) -> dict[str, Detail]:
    if len(details) > _MAX_DETAILS:
        raise ValueError(f"at most {_MAX_DETAILS} details per alarm, got {len(details)}")
    reserved = _RESERVED & set(details)
    if reserved:
        raise ValueError(f"alarm detail names reserved for the log line: {sorted(reserved)}")
    out: dict[str, Detail] = {}
    for name, value in details.items():
        if value is None or isinstance(value, bool | int | float):
            out[name] = value
        else:
            out[name] = str(value)[:_MAX_DETAIL_CHARS]
    return out


def instance_key(alarm: AlarmDefinition, fields: Mapping[str, Any]) -> str:
    """The key of one instance: its key fields' values, ``field=value`` joined by ``;``."""
    missing = [name for name in alarm.key if name not in fields]
    if missing:
        raise ValueError(f"alarm {alarm.name} needs its key field(s) {', '.join(missing)}")
    return ";".join(f"{name}={fields[name]}" for name in alarm.key)


def raise_alarm(name: str, severity: Severity | None = None, **details: Any) -> None:
    """Raise alarm ``name`` (e.g. ``LocalPushNotificationInvalidOAuthToken``). ``severity``,
    when given, must be the catalogue's; ``details`` must include the key fields."""
    alarm = definition(name)
    if severity is not None and severity != alarm.severity:
        raise ValueError(f"alarm {name} is {alarm.severity}, not {severity}")
    clean = _clean(details)
    event = AlarmEvent(name, alarm.severity, instance_key(alarm, clean), True, clean)
    _log.warning("alarm", alarm=name, severity=alarm.severity, **clean)
    if _sinks:
        _sinks[-1].submit(event)


def clear_alarm(name: str, **key: Any) -> None:
    """Clear the instance of ``name`` named by ``key`` (the definition's key fields); a no-op
    when it is not active."""
    alarm = definition(name)
    extra = set(key) - set(alarm.key)
    if extra:
        raise ValueError(f"alarm {name} is keyed by {alarm.key or 'nothing'}, not {sorted(extra)}")
    clean = _clean(key)
    event = AlarmEvent(name, alarm.severity, instance_key(alarm, clean), False)
    if _sinks:
        _sinks[-1].submit(event)
    else:
        _log.debug("alarm clear", alarm=name, **clean)
