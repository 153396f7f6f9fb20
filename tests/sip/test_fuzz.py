"""Property tests: the parser only ever fails with SipParseError, and valid messages round-trip."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sip.torture import DBLREQ, INVALID, VALID, wire
from ucpush.sip.errors import SipParseError
from ucpush.sip.framing import StreamError, StreamFramer
from ucpush.sip.helpers import error_response
from ucpush.sip.message import SipMessage, SipRequest, SipResponse, parse_message
from ucpush.sip.uri import SipURI, parse_name_addr, parse_uri

CORPUS = [wire(text) for text in (*VALID.values(), *INVALID.values(), DBLREQ)]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def exercise(msg: SipMessage) -> None:
    """Every typed accessor of a message that parsed must work."""
    msg.vias, msg.from_, msg.to, msg.call_id, msg.cseq, msg.max_forwards  # noqa: B018
    msg.contacts, msg.routes, msg.record_routes, msg.content_length, msg.date  # noqa: B018
    for contact in msg.contacts:
        contact.q, contact.expires, contact.instance, contact.reg_id  # noqa: B018
    for via in msg.vias:
        via.branch, via.rport, via.received, via.ttl  # noqa: B018
    with contextlib.suppress(SipParseError):  # Expires is not validated while parsing
        msg.expires  # noqa: B018
    assert parse_message(msg.serialize()).serialize() == msg.serialize()


def parse_or_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        assert exc.reason and exc.status in (400, 505)
        error_response(exc)
        return
    exercise(msg)


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    parse_or_error(data)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_a_start_line(data: bytes) -> None:
    parse_or_error(b"INVITE sip:a@example.com SIP/2.0\r\n" + data)
    parse_or_error(b"SIP/2.0 200 OK\r\n" + data)


MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]),
    st.integers(min_value=0, max_value=10_000),
    st.binary(min_size=1, max_size=8)
    | st.sampled_from([b",", b";", b":", b"<", b">", b'"', b"\\", b"\r\n", b"\r\n ", b"%", b"@"]),
)


def mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, pos, chunk in mutations:
        if not out:
            break
        i = pos % len(out)
        if kind == "flip":
            out[i] ^= chunk[0] or 1
        elif kind == "insert":
            out[i:i] = chunk
        elif kind == "delete":
            del out[i : i + len(chunk)]
        elif kind == "truncate":
            del out[i:]
        else:
            out[i:i] = out[i : i + 40]
    return bytes(out)


@FUZZ
@given(st.sampled_from(CORPUS), st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_valid_messages(data: bytes, mutations: list[tuple[str, int, bytes]]) -> None:
    parse_or_error(mutate(data, mutations))


@FUZZ
@given(
    st.lists(st.sampled_from(CORPUS[:6]), min_size=1, max_size=3),
    st.lists(MUTATION, max_size=3),
    st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=20),
)
def test_stream_framer_never_crashes(
    messages: list[bytes], mutations: list[tuple[str, int, bytes]], cuts: list[int]
) -> None:
    stream = mutate(b"\r\n\r\n".join(messages), mutations)
    framer = StreamFramer(max_message_size=4096)
    pos = 0
    i = 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        events = framer.feed(stream[pos : pos + size])
        pos += size
        i += 1
        if any(isinstance(e, StreamError) for e in events):
            break


@FUZZ
@given(st.text(max_size=80))
def test_uri_and_name_addr_text(text: str) -> None:
    for parse in (parse_uri, lambda t: parse_name_addr(t, "To")):
        with contextlib.suppress(SipParseError):
            parse(text)


# --- generated valid messages ---------------------------------------------------------------

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
token = st.text(ALNUM + "-.!%*_+`'~", min_size=1, max_size=12)
label = st.text(ALNUM, min_size=1, max_size=10)
hostname = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
host = hostname | st.ip_addresses(v=4).map(str) | ipv6
user = st.text(ALNUM + "-_.!~*'()&=+$,;?/", min_size=1, max_size=16)
uri_param = st.tuples(
    st.text(ALNUM + "-_.!~*'()", min_size=1, max_size=10),
    st.none() | st.text(ALNUM + "-_.!~*'()[]/:&+$", min_size=1, max_size=12),
)
pn_params = st.lists(
    st.tuples(st.sampled_from(["pn-provider", "pn-prid", "pn-param", "pn-purr"]), label),
    max_size=4,
    unique_by=lambda p: p[0],
)


@st.composite
def sip_uris(draw: st.DrawFn, *, with_user: bool | None = None) -> SipURI:
    has_user = draw(st.booleans()) if with_user is None else with_user
    params = draw(st.lists(uri_param, max_size=3)) + draw(pn_params)
    return SipURI(
        host=draw(host),
        user=draw(user) if has_user else None,
        port=draw(st.none() | st.integers(min_value=1, max_value=65535)),
        params=tuple(params),
        scheme=draw(st.sampled_from(["sip", "sips"])),
    )


display = (
    st.none()
    | st.lists(token, min_size=1, max_size=3).map(" ".join)
    | st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=20).map(
        lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )
)
header_param = st.tuples(token, st.none() | token)


@st.composite
def name_addrs(draw: st.DrawFn, *, tag: bool) -> str:
    name = draw(display)
    uri = draw(sip_uris())
    params = draw(st.lists(header_param, max_size=2))
    text = f"{name} <{uri}>" if name else f"<{uri}>"
    text += "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    if tag:
        text += f";tag={draw(token)}"
    return text


@st.composite
def messages(draw: st.DrawFn) -> SipRequest | SipResponse:
    method = draw(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "MESSAGE"]) | token)
    vias = [
        f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS', 'WSS']))} {draw(host)}"
        f";branch=z9hG4bK{draw(label)}"
        for _ in range(draw(st.integers(min_value=1, max_value=3)))
    ]
    headers = [("Via", v) for v in vias]
    headers += [
        ("From", draw(name_addrs(tag=True))),
        ("To", draw(name_addrs(tag=draw(st.booleans())))),
        ("Call-ID", draw(token) + "@" + draw(hostname)),
        ("CSeq", f"{draw(st.integers(min_value=0, max_value=2**31 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(min_value=0, max_value=255)))),
    ]
    headers += [("Contact", draw(name_addrs(tag=False))) for _ in range(draw(st.integers(0, 2)))]
    headers += [
        ("Record-Route", f"<{draw(sip_uris())};lr>") for _ in range(draw(st.integers(0, 2)))
    ]
    headers += [
        (name, draw(st.text(ALNUM + " ,;=:/", max_size=20)).strip())
        for name in draw(st.lists(st.sampled_from(["Subject", "User-Agent", "X-Thing"])))
    ]
    body = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        return SipRequest(method, draw(sip_uris()), headers, body)
    return SipResponse(draw(st.integers(min_value=100, max_value=699)), draw(token), headers, body)


@FUZZ
@given(messages())
def test_generated_messages_round_trip(msg: SipRequest | SipResponse) -> None:
    wire_form = msg.serialize()
    parsed = parse_message(wire_form, stream=True)
    assert type(parsed) is type(msg)
    assert parsed.serialize() == wire_form
    assert parsed.body == msg.body
    if isinstance(msg, SipRequest):
        assert isinstance(parsed, SipRequest)
        assert parsed.method == msg.method and parsed.uri == msg.uri
    else:
        assert isinstance(parsed, SipResponse)
        assert (parsed.status, parsed.reason) == (msg.status, msg.reason)
    assert parsed.from_ == parse_name_addr(msg.headers.get("From") or "", "From")
    assert [str(v) for v in parsed.vias] == msg.headers.get_all("Via")
    assert parsed.headers.get_all("Contact") == msg.headers.get_all("Contact")
    exercise(parsed)


@FUZZ
@given(sip_uris())
def test_generated_uris_round_trip(uri: SipURI) -> None:
    parsed = parse_uri(str(uri))
    assert parsed == uri and str(parsed) == str(uri)
    assert parsed.equivalent(uri)


COMPACT = {
    "Call-ID": "i",
    "Contact": "m",
    "From": "f",
    "To": "t",
    "Via": "v",
    "Content-Length": "l",
    "Subject": "s",
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.data())
def test_header_spellings_and_folding(msg: SipRequest | SipResponse, data: st.DataObject) -> None:
    """Compact forms, any name case, space before the colon and a fold after it all parse to
    the same headers (unknown names keep their spelling, so they compare case-insensitively)."""
    wire_form = msg.serialize()
    head, _, body = wire_form.partition(b"\r\n\r\n")
    start, *lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    out = [start]
    for line in lines:
        name, _, value = line.partition(": ")
        spelling = data.draw(st.sampled_from(["as-is", "lower", "upper", "compact"]))
        if spelling == "lower":
            name = name.lower()
        elif spelling == "upper":
            name = name.upper()
        elif spelling == "compact":
            name = COMPACT.get(name, name)
        gap = data.draw(st.sampled_from([":", " :", ":\r\n ", " :\r\n\t"]))
        out.append(f"{name}{gap} {value}")
    raw = "\r\n".join(out).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body
    parsed, expected = parse_message(raw, stream=True), parse_message(wire_form)
    assert parsed.headers == expected.headers  # names compare case-insensitively
    assert parsed.start_line() == expected.start_line() and parsed.body == expected.body
