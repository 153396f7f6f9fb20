"""The SPEC §7 catalogue as data, and the programming errors ``raise_alarm`` refuses."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from ucpush.alarms import CATALOGUE, UnknownAlarm, clear_alarm, raise_alarm
from ucpush.alarms.catalogue import (
    SEVERITY_RANK,
    at_or_above,
    definition,
    parse_push_level,
    push_level_rank,
)

# SPEC §7, name → severity (XCPConfigMgrAccessTokenIsNull has none there: ours is CRITICAL).
SPEC_ALARMS = {
    "PushNotificationServiceUnavailable": "ALERT",
    "PushNotificationInvalidDeviceTokenResponse": "ERROR",
    "PushNotificationServiceAccessTokenUnavailable": "ALERT",
    "StartFailed": "CRITICAL",
    "AccessTokenInvalid": "ALERT",
    "HttpClientPoolCreationError": "ALERT",
    "PushNotificationFailed": "CRITICAL",
    "PushNotificationFailedInvalidDeviceToken": "CRITICAL",
    "PushNotificationFailedInvalidAccessToken": "CRITICAL",
    "AccessTokenFetchFailed": "CRITICAL",
    "XCPConfigMgrAccessTokenIsNull": "CRITICAL",
    "APNSAlarm": "ALERT",
    "LocalPushNotificationInvalidOAuthToken": "ALERT",
    "LocalPushNotificationServiceUnavailable": "CRITICAL",
    "LocalPushStartFailed": "ALERT",
}


def test_catalogue_is_the_spec() -> None:
    assert {name: alarm.severity for name, alarm in CATALOGUE.items()} == SPEC_ALARMS
    assert all(alarm.meaning for alarm in CATALOGUE.values())


def test_unknown_alarm_is_a_programming_error() -> None:
    with pytest.raises(UnknownAlarm, match="PushNotificationServiceDown"):
        raise_alarm("PushNotificationServiceDown", "ALERT")
    with pytest.raises(UnknownAlarm):
        clear_alarm("NoSuchAlarm")
    with pytest.raises(UnknownAlarm):
        definition("")


def test_wrong_severity_is_refused() -> None:
    with pytest.raises(ValueError, match="LocalPushStartFailed is ALERT, not CRITICAL"):
        raise_alarm("LocalPushStartFailed", "CRITICAL", error="x")


def test_key_fields_are_required_and_only_they_clear() -> None:
    with pytest.raises(ValueError, match="device_id"):
        raise_alarm("PushNotificationInvalidDeviceTokenResponse", service="APNS")
    with pytest.raises(ValueError, match="device_id"):
        clear_alarm("PushNotificationInvalidDeviceTokenResponse")
    with pytest.raises(ValueError, match="keyed by"):
        clear_alarm("LocalPushStartFailed", device_id="d1")


def test_details_are_bounded() -> None:
    with pytest.raises(ValueError, match="reserved"):
        raise_alarm("StartFailed", severity="CRITICAL", event="x")
    with pytest.raises(ValueError, match="at most 16"):
        raise_alarm("StartFailed", **{f"k{i}": i for i in range(17)})
    with capture_logs() as logs:
        raise_alarm("StartFailed", error="x" * 1000, port=9560, obj=object)
    assert len(logs[0]["error"]) == 256 and logs[0]["port"] == 9560
    assert logs[0]["obj"] == str(object) and logs[0]["severity"] == "CRITICAL"


def test_severity_order_is_syslog() -> None:
    assert sorted(SEVERITY_RANK, key=SEVERITY_RANK.__getitem__) == [
        "ALERT",
        "CRITICAL",
        "ERROR",
        "WARNING",
        "NOTICE",
        "INFO",
    ]
    assert at_or_above("ALERT", "Critical") and at_or_above("CRITICAL", "Critical")
    assert not at_or_above("ERROR", "Critical")
    assert at_or_above("ERROR", "error") and not at_or_above("WARNING", "Error")
    assert at_or_above("INFO", "Info")
    assert push_level_rank(" warning ") == 4
    assert parse_push_level("NOTICE") == "Notice"
    with pytest.raises(ValueError, match="Critical, Error, Warning, Notice, Info"):
        parse_push_level("Alert")
