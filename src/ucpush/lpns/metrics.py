"""Local push counters (SPEC §7), under their RTMT names; Prometheus adds ``_total``."""

from __future__ import annotations

from prometheus_client import Counter

REQ_SENT = Counter("NumberOfLocalPushReqSent", "Local pushes sent to devices (every type)")
RES_RECEIVED = Counter("NumberOfLocalPushResReceived", "Local pushes acknowledged by devices")
TIMEOUT = Counter(
    "NumberOfLocalPushTimout", "Local pushes without acknowledgement within ack_timeout"
)
ERROR_RES_RECEIVED = Counter(
    "NumberOfLocalPushErrorResReceived", "Local pushes devices answered with an error (nack)"
)
MISSED_CALL_SENT = Counter(
    "NumberofMissedCallLocalPushReqSent", "Missed-call local pushes sent to devices"
)
SHARED_CANCEL_SENT = Counter(
    "NumberofSharedCancelLocalPushReqSent",
    "Answered-elsewhere (shared line cancel) local pushes sent to devices",
)
