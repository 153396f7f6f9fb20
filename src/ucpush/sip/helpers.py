"""Building responses from requests, and fresh branch/tag/Call-ID values."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable

from ucpush.sip.errors import SipParseError
from ucpush.sip.message import MAGIC_COOKIE, Headers, SipRequest, SipResponse, Via
from ucpush.sip.uri import parse_name_addr

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    430: "Flow Failed",
    439: "First Hop Lacks Outbound Support",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",  # RFC 8599 §8.1
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def new_branch() -> str:
    """An RFC 3261 branch: magic cookie plus 80 random bits."""
    return MAGIC_COOKIE + secrets.token_hex(10)


def new_tag() -> str:
    """A From/To tag with 64 random bits (§19.3 asks for at least 32)."""
    return secrets.token_hex(8)


def new_call_id(host: str | None = None) -> str:
    """A globally unique Call-ID; ``host`` is appended as ``@host`` when given."""
    local = secrets.token_hex(16)
    return f"{local}@{host}" if host else local


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status, "")


def _response_headers(
    headers: Headers, status: int, to_tag: str | None, method: str | None
) -> Headers:
    out = Headers()
    for name, value in headers:
        if name in ("Via", "From", "Call-ID", "CSeq"):
            out.add(name, value)
        elif name == "To":
            # §8.2.6.2: a tag is added unless it is a 100 Trying or the To already has one.
            if to_tag is not None and status > 100 and parse_name_addr(value, "To").tag is None:
                value = f"{value};tag={to_tag}"
            out.add(name, value)
        elif name == "Record-Route" and method != "REGISTER" and 100 < status < 300:
            # §12.1.1: dialog-creating responses echo Record-Route.
            out.add(name, value)
        elif name == "Timestamp" and status == 100:
            out.add(name, value)  # §8.2.6.1: lets the client measure round-trip time
    return out


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """Response to ``request`` (§8.2.6): Via, From, To, Call-ID, CSeq copied in order, To-tag
    added when ``to_tag`` is given (pass ``new_tag()`` or the dialog's tag), then ``headers``."""
    out = _response_headers(request.headers, status, to_tag, request.method)
    for name, value in headers:
        out.add(name, value)
    return SipResponse(status, reason_phrase(status) if reason is None else reason, out, body)


def error_response(error: SipParseError, *, to_tag: str | None = None) -> SipResponse | None:
    """The 400/505 answer to a request that failed to parse, or None when it must be dropped
    (not a request, or its Via/From/To/Call-ID/CSeq are unusable). The reason phrase says
    what was wrong."""
    if error.headers is None or error.method is None or error.method == "ACK":
        return None
    out = _response_headers(error.headers, error.status, to_tag, error.method)
    reason = error.reason.replace("\r", " ").replace("\n", " ")
    return SipResponse(error.status, reason, out)


def build_cancel(invite: SipRequest) -> SipRequest:
    """CANCEL for a pending INVITE client transaction (RFC 3261 §9.1): same Request-URI,
    Call-ID, From, To, CSeq number and top Via (so it hits the same server transaction)."""
    out = Headers()
    out.add("Via", invite.headers.get_all("Via")[0])
    for name, value in invite.headers:
        if name in ("From", "To", "Call-ID", "Route", "Max-Forwards"):
            out.add(name, value)
    out.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return SipRequest("CANCEL", invite.uri, out)


def build_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """ACK for a non-2xx final response, sent by the INVITE client transaction (§17.1.1.3):
    top Via and Route of the INVITE, To of the response (it carries the tag)."""
    out = Headers()
    out.add("Via", invite.headers.get_all("Via")[0])
    for name, value in invite.headers:
        if name in ("From", "Call-ID", "Route", "Max-Forwards"):
            out.add(name, value)
        elif name == "To":
            out.add("To", response.headers.get("To") or value)
    out.add("CSeq", f"{invite.cseq.seq} ACK")
    return SipRequest("ACK", invite.uri, out)


def _same_address(host: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) == ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False  # a host name never equals the packet's source address


def stamp_received(request: SipRequest, source_host: str, source_port: int) -> Via:
    """Server transport duty on every received request (RFC 3261 §18.2.1, RFC 3581 §4):
    add ``received`` when the top Via's sent-by is a name or another address, and fill an
    empty ``rport`` (which also forces ``received``). Updates the request; returns the Via."""
    via = request.top_via
    if via.has_rport:
        via = via.with_param("rport", str(source_port))
        via = via.with_param("received", source_host)
    elif not _same_address(via.host, source_host):
        via = via.with_param("received", source_host)
    else:
        return via
    request.headers.replace_first("Via", str(via))
    return via


def response_address(via: Via) -> tuple[str, int]:
    """Where an unreliable transport sends a response (§18.2.2, RFC 3581 §4): maddr, else
    received (with rport when filled in), else sent-by. Reliable transports answer on the
    request's own connection first; this is their fallback too."""
    default_port = 5061 if via.transport in ("TLS", "SCTP-TLS") else 5060
    maddr = via.maddr
    if maddr:
        return maddr, via.port or default_port
    received = via.received
    if received:
        return received, via.rport or via.port or default_port
    return via.host, via.port or default_port
