"""The alarm catalogue (SPEC §7) as data: name, severity, meaning and what identifies one
instance of the alarm (its key fields), plus the severity order the uploader filters on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

Severity = Literal["ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
# Syslog order, as the guide's alarms use it: ALERT (1) is more severe than CRITICAL (2), so a
# minimum level of Critical also sends ALERT alarms.
SEVERITY_RANK: Mapping[Severity, int] = {
    "ALERT": 1,
    "CRITICAL": 2,
    "ERROR": 3,
    "WARNING": 4,
    "NOTICE": 5,
    "INFO": 6,
}
PushLevel = Literal["Critical", "Error", "Warning", "Notice", "Info"]
PUSH_LEVELS: tuple[PushLevel, ...] = get_args(PushLevel)

# Detail fields that identify a person or a device. The uploader sends them only encrypted
# with the PII support token, or not at all.
PII_FIELDS = frozenset(
    {
        "device_id",
        "node",  # chat alarms: the XEP-0357 node is the device id
        "user",
        "user_id",
        "username",
        "aor",
        "jid",
        "caller",
        "caller_name",
        "caller_number",
        "target",
        "token",
        "ssid",
        "contact",
    }
)


class UnknownAlarm(ValueError):
    """A name that is not in the catalogue: a programming error."""


@dataclass(frozen=True, slots=True)
class AlarmDefinition:
    name: str
    severity: Severity
    meaning: str
    # Detail fields naming one instance: raise and clear with the same values. Empty: one
    # instance per node.
    key: tuple[str, ...] = ()
    side: Literal["call", "chat", "local"] = "call"


_DEFINITIONS = (
    AlarmDefinition(
        "PushNotificationServiceUnavailable",
        "ALERT",
        "the SIP core cannot reach its push dispatcher (no relay client: push not onboarded)",
    ),
    AlarmDefinition(
        "PushNotificationInvalidDeviceTokenResponse",
        "ERROR",
        "the relay answered 410 (or BadDeviceToken) for a device; a 410 pauses it until it "
        "signs in again with a valid token",
        key=("device_id",),
    ),
    AlarmDefinition(
        "PushNotificationServiceAccessTokenUnavailable",
        "ALERT",
        "no valid access token from the relay: network or relay down (check reachability)",
    ),
    AlarmDefinition("StartFailed", "CRITICAL", "the push dispatcher failed to start"),
    AlarmDefinition(
        "AccessTokenInvalid",
        "ALERT",
        "the access token expired and the relay refused the refresh token; replace it "
        "(ucpush relay account new-refresh-token)",
    ),
    AlarmDefinition(
        "HttpClientPoolCreationError",
        "ALERT",
        "the HTTP client pool towards the relay could not be created (check proxy settings)",
    ),
    AlarmDefinition(
        "PushNotificationFailed",
        "CRITICAL",
        "a chat push failed (the error code is in the details)",
        key=("service",),
        side="chat",
    ),
    AlarmDefinition(
        "PushNotificationFailedInvalidDeviceToken",
        "CRITICAL",
        "a chat push was refused: invalid device token",
        key=("node",),  # the XEP-0357 node, which is the device id
        side="chat",
    ),
    AlarmDefinition(
        "PushNotificationFailedInvalidAccessToken",
        "CRITICAL",
        "a chat push was refused: invalid access token",
        side="chat",
    ),
    AlarmDefinition(
        "AccessTokenFetchFailed",
        "CRITICAL",
        "chat push could not fetch an access token from the relay",
        side="chat",
    ),
    # The guide gives no severity for this one; CRITICAL: every chat push fails until it clears.
    AlarmDefinition(
        "XCPConfigMgrAccessTokenIsNull",
        "CRITICAL",
        "chat push has no access token (not onboarded, or token fetch failing)",
        side="chat",
    ),
    AlarmDefinition(
        "APNSAlarm",
        "ALERT",
        "a client could not process a push",
        key=("device_id",),
    ),
    AlarmDefinition(
        "LocalPushNotificationInvalidOAuthToken",
        "ALERT",
        "a client presented an invalid or expired OAuth token; its local push connection "
        "was removed",
        key=("device_id",),
        side="local",
    ),
    AlarmDefinition(
        "LocalPushNotificationServiceUnavailable",
        "CRITICAL",
        "the local push service is not available",
        side="local",
    ),
    AlarmDefinition(
        "LocalPushStartFailed",
        "ALERT",
        "the local push service failed to start (port in use, bad certificate)",
        side="local",
    ),
)

CATALOGUE: Mapping[str, AlarmDefinition] = {d.name: d for d in _DEFINITIONS}


def definition(name: str) -> AlarmDefinition:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownAlarm(f"unknown alarm {name!r}: not in the SPEC §7 catalogue") from None


def push_level_rank(level: str) -> int:
    """Rank of a minimum push level (``Critical``... ``Info``, any case)."""
    for candidate in PUSH_LEVELS:
        if candidate.lower() == level.strip().lower():
            return SEVERITY_RANK[candidate.upper()]  # type: ignore[index]
    raise ValueError(f"unknown level {level!r}: use one of {', '.join(PUSH_LEVELS)}")


def parse_push_level(level: str) -> PushLevel:
    for candidate in PUSH_LEVELS:
        if candidate.lower() == level.strip().lower():
            return candidate
    raise ValueError(f"unknown level {level!r}: use one of {', '.join(PUSH_LEVELS)}")


def at_or_above(severity: Severity, level: str) -> bool:
    """Whether an alarm of ``severity`` is sent with minimum push level ``level``."""
    return SEVERITY_RANK[severity] <= push_level_rank(level)
