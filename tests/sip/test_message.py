from __future__ import annotations

import pytest

from tests.sip.torture import DBLREQ, INVALID, VALID, wire
from ucpush.sip.errors import SipParseError
from ucpush.sip.helpers import (
    error_response,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    response_address,
    stamp_received,
)
from ucpush.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    Via,
    canonical_name,
    parse_message,
    split_list,
)
from ucpush.sip.uri import (
    AbsoluteURI,
    NameAddr,
    SipURI,
    parse_name_addr,
    parse_uri,
    quote,
    unquote,
)

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 192.0.2.7:50112;branch=z9hG4bK776asdhds;rport;alias\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=a73kszlfl\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.7\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.7:50112;transport=tls"
    b";pn-provider=apns;pn-prid=00fc13adff78512;pn-param=ABCD1234.com.example.app.voip>"
    b';+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1;expires=3600'
    b";+sip.pnsreg\r\n"
    b"Expires: 3600\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


@pytest.mark.parametrize("name", sorted(VALID))
def test_rfc4475_valid_messages_parse(name: str) -> None:
    msg = parse_message(wire(VALID[name]))
    # Everything a proxy touches is readable and the message survives a round trip.
    assert msg.vias and msg.call_id and msg.cseq.seq >= 0
    wire_form = msg.serialize()
    assert parse_message(wire_form, stream=True).serialize() == wire_form


@pytest.mark.parametrize("name", sorted(INVALID))
def test_rfc4475_invalid_messages_rejected(name: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(wire(INVALID[name]))
    assert info.value.reason


def test_wsinv_details() -> None:
    msg = parse_message(wire(VALID["wsinv"]))
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE"
    assert isinstance(msg.uri, SipURI) and msg.uri.param("unknownparam") == ""
    assert msg.to.tag == "1918181833n" and msg.to.display_name is None
    assert msg.from_.display == 'J Rosenberg \\"' and msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    vias = msg.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert vias[0].has_rport and vias[0].rport is None
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    [contact] = msg.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.q == 0.33 and contact.param("newparam") == "newvalue"
    assert contact.param("secondparam") == ""
    [route] = msg.routes
    assert isinstance(route.uri, SipURI) and route.uri.lr
    assert msg.content_length == 150 and len(msg.body) == 150


def test_intmeth_details() -> None:
    msg = parse_message(wire(VALID["intmeth"]))
    assert isinstance(msg, SipRequest)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = msg.uri
    assert isinstance(uri, SipURI)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


def test_escapes_are_kept_but_compared_unescaped() -> None:
    msg = parse_message(wire(VALID["esc01"]))
    assert isinstance(msg, SipRequest)
    assert isinstance(msg.uri, SipURI)
    assert msg.uri.user == "sips%3Auser%40example.com" and msg.uri.host == "example.net"
    assert msg.to.uri.equivalent(parse_uri("sip:user@example.com"))
    [contact] = msg.contacts
    assert contact.uri.equivalent(parse_uri("sip:caller@host5.example.net;lr;name=value%41"))
    esc02 = parse_message(wire(VALID["esc02"]))
    assert isinstance(esc02, SipRequest) and esc02.method == "RE%47IST%45R"
    assert len(esc02.contacts) == 2  # "C%6Fntact" is an unknown header, not Contact
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_semicolon_in_user_part() -> None:
    msg = parse_message(wire(VALID["semiuri"]))
    assert isinstance(msg, SipRequest) and isinstance(msg.uri, SipURI)
    assert msg.uri.user == "user;par=u%40example.net" and msg.uri.host == "example.com"
    assert msg.uri.params == ()
    assert msg.headers.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_long_request() -> None:
    msg = parse_message(wire(VALID["longreq"]))
    assert len(msg.vias) == 34
    assert msg.vias[-1].received == "192.0.2.5"


def test_datagram_trailing_octets_ignored() -> None:
    msg = parse_message(wire(DBLREQ))
    assert isinstance(msg, SipRequest) and msg.method == "REGISTER" and msg.body == b""
    assert msg.contacts[0].uri.equivalent(parse_uri("sip:j.user@host.example.com"))


def test_responses() -> None:
    msg = parse_message(wire(VALID["unreason"]))
    assert isinstance(msg, SipResponse) and msg.status == 200
    assert msg.reason.startswith("= 2**3 * 5**2 \u043d\u043e")
    msg = parse_message(wire(VALID["noreason"]))
    assert isinstance(msg, SipResponse) and (msg.status, msg.reason) == (100, "")


def test_rfc2543_request_without_branch_or_max_forwards() -> None:
    msg = parse_message(wire(VALID["inv2543"]))
    assert msg.top_via.branch is None and msg.max_forwards is None and msg.from_.tag is None
    assert (
        msg.content_length is None and len(msg.body) == len(VALID["inv2543"].split("\n\n")[1]) + 8
    )


def test_unknown_schemes_are_opaque() -> None:
    msg = parse_message(wire(VALID["unkscm"]))
    assert isinstance(msg, SipRequest)
    assert msg.uri == AbsoluteURI("nobodyKnowsThisScheme", "totallyopaquecontent")
    msg = parse_message(wire(VALID["unksm2"]))
    assert msg.to.uri == AbsoluteURI("isbn", "2983792873")
    assert str(msg.contacts[0].uri) == "name:John_Smith"


def test_addr_spec_params_belong_to_header() -> None:
    msg = parse_message(wire(VALID["cparam01"]))
    [contact] = msg.contacts
    assert contact.param("unknownparam") == "" and contact.uri.params == ()  # type: ignore[union-attr]
    msg = parse_message(wire(VALID["cparam02"]))
    [contact] = msg.contacts
    assert contact.params == () and contact.uri.param("unknownparam") == ""  # type: ignore[union-attr]
    msg = parse_message(wire(VALID["regescrt"]))
    uri = msg.contacts[0].uri
    assert isinstance(uri, SipURI) and uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)


def test_ipv6() -> None:
    msg = parse_message(wire(VALID["ipv6-good"]))
    assert isinstance(msg, SipRequest) and isinstance(msg.uri, SipURI)
    assert msg.uri.host == "[2001:db8::10]" and msg.uri.port is None
    assert msg.top_via.host == "[2001:db8::9:1]"
    msg = parse_message(wire(VALID["port-ambiguous"]))
    assert isinstance(msg, SipRequest) and isinstance(msg.uri, SipURI)
    assert (msg.uri.host, msg.uri.port) == ("[2001:db8::10:5070]", None)
    msg = parse_message(wire(VALID["port-unambiguous"]))
    assert isinstance(msg, SipRequest) and isinstance(msg.uri, SipURI)
    assert (msg.uri.host, msg.uri.port) == ("[2001:db8::10]", 5070)
    msg = parse_message(wire(VALID["via-received-param-with-delim"]))
    assert msg.top_via.received == "[2001:db8::9:255]"
    msg = parse_message(wire(VALID["via-received-param-no-delim"]))
    assert msg.top_via.received == "2001:db8::9:255"
    assert parse_uri("sip:[::1]:5060").equivalent(parse_uri("sip:[0:0:0:0:0:0:0:1]:5060"))


def test_invalid_reasons_and_statuses() -> None:
    with pytest.raises(SipParseError, match="version") as info:
        parse_message(wire(INVALID["badvers"]))
    assert info.value.status == 505
    response = error_response(info.value)
    assert response is not None and response.status == 505
    for name, pattern in [
        ("clerr", "Content-Length larger"),
        ("ncl", "Content-Length"),
        ("scalar02", "CSeq"),
        ("quotbal", "quoted"),
        ("ltgtruri", "URI"),
        ("escruri", "Request-URI must not contain headers"),
        ("baddate", "Date"),
        ("regbadct", "enclosed in <>"),
        ("badaspec", "Whitespace inside <>"),
        ("baddn", "Display name"),
        ("mismatch01", "CSeq method"),
        ("insuf", "Missing"),
        ("multi01", "Multiple"),
        ("mcl01", "Multiple Content-Length"),
        ("badinv01", "Via"),
    ]:
        with pytest.raises(SipParseError, match=pattern):
            parse_message(wire(INVALID[name]))


def test_error_response_for_broken_request() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(wire(INVALID["mismatch01"]))
    response = error_response(info.value, to_tag="xyz")
    assert response is not None
    assert response.status == 400 and response.reason == "CSeq method does not match request method"
    assert response.to.tag == "xyz" and response.call_id == "mismatch01.dj0234sxdfl3"
    assert response.top_via.branch == "z9hG4bKkdjuw"
    # Without Call-ID/From/To the request can only be dropped.
    with pytest.raises(SipParseError) as info:
        parse_message(wire(INVALID["insuf"]))
    assert error_response(info.value) is None
    # Responses are never answered.
    with pytest.raises(SipParseError) as info:
        parse_message(wire(INVALID["bigcode"]))
    assert error_response(info.value) is None


@pytest.mark.parametrize(
    ("compact", "full"),
    [
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("f", "From"),
        ("t", "To"),
        ("v", "Via"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("k", "Supported"),
        ("e", "Content-Encoding"),
        ("s", "Subject"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("x", "Session-Expires"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
    ],
)
def test_compact_forms(compact: str, full: str) -> None:
    assert canonical_name(compact) == full
    assert canonical_name(compact.upper()) == full
    assert canonical_name(full.upper()) == full


def test_compact_headers_in_message() -> None:
    raw = (
        b"SUBSCRIBE sip:bob@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
        b"f: <sip:a@example.com>;tag=1\r\nt: <sip:bob@example.com>\r\ni: c1\r\n"
        b"CSeq: 1 SUBSCRIBE\r\no: presence\r\nu: presence, dialog\r\nk: path, outbound\r\n"
        b"x: 1800;refresher=uac\r\nr: <sip:c@example.com>\r\nb: <sip:d@example.com>\r\n"
        b"e: gzip\r\ns: hi\r\nc: text/plain\r\nm: <sip:a@h>\r\nl: 2\r\n\r\nok"
    )
    msg = parse_message(raw)
    names = [name for name, _ in msg.headers]
    assert names == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Event",
        "Allow-Events",
        "Allow-Events",
        "Supported",
        "Supported",
        "Session-Expires",
        "Refer-To",
        "Referred-By",
        "Content-Encoding",
        "Subject",
        "Content-Type",
        "Contact",
        "Content-Length",
    ]
    assert msg.body == b"ok" and msg.content_type == "text/plain"
    assert b"\r\nAllow-Events: presence\r\nAllow-Events: dialog\r\n" in msg.serialize()


def test_folding_and_multi_value_split() -> None:
    raw = (
        b"INVITE sip:b@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1,\r\n"
        b"\t SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK2;received=192.0.2.1;rport=5070\r\n"
        b'From: "Doe, John" <sip:a@example.com>;tag=1\r\n'
        b"To: <sip:b@example.com>\r\nCall-ID: c2\r\nCSeq: 2 INVITE\r\n"
        b'Contact: "A, B" <sip:a@h;x=1,y>;q=0.5, <sip:c@h>;expires=60, sip:d@h;q=1\r\n'
        b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
        b"Route: <sip:p3.example.com;lr>\r\n"
        b'WWW-Authenticate: Digest realm="a,b", nonce="x", qop="auth,auth-int"\r\n'
        b'Proxy-Authorization: Digest username="a", uri="sip:b@example.com"\r\n'
        b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
        b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(raw)
    assert [v.host for v in msg.vias] == ["a.example.com", "[2001:db8::1]"]
    assert msg.vias[1].port == 5061 and msg.vias[1].rport == 5070
    assert msg.vias[1].received == "192.0.2.1" and msg.vias[1].reliable
    assert msg.from_.display == "Doe, John"
    contacts = msg.contacts
    assert [c.display for c in contacts] == ["A, B", None, None]
    assert [c.q for c in contacts] == [0.5, None, 1.0]
    assert contacts[1].expires == 60
    assert [str(r.uri) for r in msg.record_routes] == [
        "sip:p1.example.com;lr",
        "sip:p2.example.com;lr",
    ]
    assert msg.headers.count("WWW-Authenticate") == 1
    assert msg.headers.count("Proxy-Authorization") == 1
    assert msg.headers.get("Date") == "Sat, 13 Nov 2010 23:29:00 GMT"
    assert msg.date is not None and msg.date.year == 2010


def test_split_list() -> None:
    assert split_list('"a,b" <sip:x>, <sip:y;p=1,2>, z') == ['"a,b" <sip:x>', "<sip:y;p=1,2>", "z"]
    assert split_list("abc") == ["abc"]
    with pytest.raises(SipParseError):
        split_list('"unterminated, x')


def test_rfc8599_contact() -> None:
    msg = parse_message(REGISTER)
    [contact] = msg.contacts
    uri = contact.uri
    assert isinstance(uri, SipURI)
    assert uri.pn_params == {
        "pn-provider": "apns",
        "pn-prid": "00fc13adff78512",
        "pn-param": "ABCD1234.com.example.app.voip",
    }
    assert uri.transport == "tls" and uri.port == 50112
    assert contact.instance == "<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"
    assert contact.reg_id == 1 and contact.expires == 3600
    assert contact.param("+sip.pnsreg") == ""
    assert msg.expires == 3600
    # pn-purr in a Request-URI is kept exactly (case and all).
    req = parse_uri("sip:alice@192.0.2.7;pn-provider=fcm;pn-prid=Tok:EN_1-x;pn-purr=Zx81aB")
    assert isinstance(req, SipURI) and req.param("pn-purr") == "Zx81aB"
    assert str(req) == "sip:alice@192.0.2.7;pn-provider=fcm;pn-prid=Tok:EN_1-x;pn-purr=Zx81aB"


def test_contact_wildcard() -> None:
    raw = REGISTER.replace(
        REGISTER[REGISTER.index(b"Contact:") : REGISTER.index(b"Expires")], b"Contact: *\r\n"
    ).replace(b"Expires: 3600", b"Expires: 0")
    msg = parse_message(raw)
    assert msg.contact_wildcard and msg.contacts == [] and msg.expires == 0
    with pytest.raises(SipParseError, match=r"\*"):
        parse_message(raw.replace(b"Contact: *", b"Contact: *, <sip:a@b>"))


def test_overlarge_expiry_values_are_clamped() -> None:
    raw = REGISTER.replace(b"Expires: 3600", b"Expires: 1" + b"0" * 30).replace(
        b"expires=3600", b"expires=280297596632815"
    )
    msg = parse_message(raw)
    assert msg.expires == 2**32 - 1 and msg.contacts[0].expires == 2**32 - 1


def test_round_trip_register() -> None:
    msg = parse_message(REGISTER)
    assert msg.serialize() == REGISTER
    assert parse_message(msg.serialize()) == msg


def test_serialize_fixes_content_length() -> None:
    msg = parse_message(REGISTER)
    msg.body = b"hello"
    assert b"Content-Length: 5\r\n\r\nhello" in msg.serialize()
    msg.headers.remove("Content-Length")
    assert msg.serialize().endswith(b"Content-Length: 5\r\n\r\nhello")


def test_headers_api() -> None:
    h = Headers([("via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("To", "<sip:x@y>")])
    h.prepend("Via", "SIP/2.0/UDP b;branch=z9hG4bK2")
    h.add("v", "SIP/2.0/UDP c;branch=z9hG4bK3")
    assert next(v for n, v in h if n == "Via").startswith("SIP/2.0/UDP b")
    assert h.count("VIA") == 3 and "to" in h and "From" not in h
    assert h.pop_first("Via") == "SIP/2.0/UDP b;branch=z9hG4bK2"
    h.set("Via", "SIP/2.0/UDP d;branch=z9hG4bK4")
    assert h.get_all("Via") == ["SIP/2.0/UDP d;branch=z9hG4bK4"]
    assert h.remove("via") == 1 and len(h) == 1
    copy = h.copy()
    copy.add("X-A", "1")
    assert copy != h and copy.get("x-a") == "1"


def test_via_model() -> None:
    via = Via("UDP", "192.0.2.1", 5060, (("branch", "z9hG4bKx"), ("rport", None)))
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx;rport"
    filled = via.with_param("rport", "4000").with_param("received", "198.51.100.1")
    assert str(filled) == (
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx;rport=4000;received=198.51.100.1"
    )
    assert filled.rport == 4000 and not filled.reliable


def test_build_request_and_response() -> None:
    req = SipRequest(
        "OPTIONS",
        "sip:bob@example.com",
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.1;branch={new_branch()}"),
            ("Record-Route", "<sip:p.example.com;lr>"),
            ("From", f"<sip:alice@example.com>;tag={new_tag()}"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", new_call_id("example.com")),
            ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70"),
        ],
    )
    parsed = parse_message(req.serialize(), stream=True)
    assert parsed.headers.pop_first("Content-Length") == "0"
    assert parsed == req
    resp = make_response(req, 200, to_tag="t1", headers=[("Allow", "INVITE, ACK")])
    assert resp.reason == "OK" and resp.to.tag == "t1"
    assert [n for n, _ in resp.headers] == [
        "Via",
        "Record-Route",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Allow",
    ]
    req.headers.add("Timestamp", "54")
    trying = make_response(req, 100, to_tag="t1")
    assert trying.to.tag is None and "Record-Route" not in trying.headers
    assert (
        trying.headers.get("Timestamp") == "54"
        and "Timestamp" not in make_response(req, 200).headers
    )
    again = parse_message(resp.serialize())
    assert again.headers.get_all("Allow") == ["INVITE", "ACK"] and again.to.tag == "t1"
    assert new_branch().startswith("z9hG4bK") and new_tag() != new_tag()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
    ],
)
def test_uri_equivalent(a: str, b: str) -> None:
    assert parse_uri(a).equivalent(parse_uri(b))
    assert parse_uri(b).equivalent(parse_uri(a))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
        ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
        ("sip:alice:pw@atlanta.com", "sip:alice@atlanta.com"),
        ("sip:alice@atlanta.com", "tel:+1-212-555-1212"),
    ],
)
def test_uri_not_equivalent(a: str, b: str) -> None:
    assert not parse_uri(a).equivalent(parse_uri(b))
    assert not parse_uri(b).equivalent(parse_uri(a))


def test_uri_parts_and_serialization() -> None:
    text = "sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr;maddr=239.0.0.1?x=1&y="
    uri = parse_uri(text)
    assert isinstance(uri, SipURI) and uri.secure
    assert (uri.user, uri.password, uri.host, uri.port) == (
        "alice",
        "secret",
        "[2001:db8::1]",
        5061,
    )
    assert uri.transport == "tcp" and uri.lr and uri.maddr == "239.0.0.1"
    assert uri.headers == (("x", "1"), ("y", ""))
    assert (
        str(uri) == "sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr;maddr=239.0.0.1?x=1&y="
    )
    plain = uri.without_params("lr", "maddr").with_param("ob", None)
    assert str(plain).startswith("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;ob?")
    assert SipURI("example.com").equivalent(parse_uri("sip:EXAMPLE.com"))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sip:",
        "sip:@host",
        "sip:user@",
        "sip:user@host:99999",
        "sip:user@host:abc",
        "sip:user@[::1",
        "sip:user@[zz::1]",
        "sip:user@host;",
        "sip:user@host;=x",
        "sip:user@host?novalue",
        "sip:us er@host",
        "sip:user@ho%zzst",
        "sip:<user>@host",
        "1abc:foo",
        "nocolon",
    ],
)
def test_bad_uris(bad: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(bad)


def test_name_addr_forms() -> None:
    na = parse_name_addr('"Alice \\"A\\"" <sip:alice@example.com;transport=tcp>;tag=9', "From")
    assert na.display == 'Alice "A"' and na.tag == "9"
    assert str(na) == '"Alice \\"A\\"" <sip:alice@example.com;transport=tcp>;tag=9'
    addr_spec = parse_name_addr("sip:alice@example.com;transport=tcp;tag=9", "From")
    assert addr_spec.uri == parse_uri("sip:alice@example.com")
    assert addr_spec.params == (("transport", "tcp"), ("tag", "9"))
    assert str(NameAddr(parse_uri("sip:a@b")).with_param("tag", "1")) == "<sip:a@b>;tag=1"
    for bad in ["", "<sip:a@b", '"x <sip:a@b>', "a b c d <>", "sip:a@b;;x", "<sip:a@b>;tag=1 x"]:
        with pytest.raises(SipParseError):
            parse_name_addr(bad, "To")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"INVITE sip:a@b SIP/2.0\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\n continuation\r\n\r\n",
        b"SIP/2.0 20 OK\r\n\r\n",
        b"SIP/2.0 099 Odd\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
        b"To: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
        b"HELLO\r\n\r\n",
    ],
)
def test_garbage_rejected(raw: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(raw)


def test_stream_mode_requires_content_length() -> None:
    raw = REGISTER.replace(b"Content-Length: 0\r\n", b"")
    assert parse_message(raw).body == b""
    with pytest.raises(SipParseError, match="required"):
        parse_message(raw, stream=True)
    with pytest.raises(SipParseError, match="does not match"):
        parse_message(REGISTER + b"xx", stream=True)


def test_leading_crlf_and_bare_lf_accepted() -> None:
    msg = parse_message(b"\r\n\r\n" + REGISTER.replace(b"\r\n", b"\n"))
    assert isinstance(msg, SipRequest) and msg.method == "REGISTER"


def test_typed_values_follow_header_changes() -> None:
    msg = parse_message(REGISTER)
    assert msg.to.tag is None and len(msg.vias) == 1
    msg.vias.clear()  # a copy: the message is not affected
    assert len(msg.vias) == 1
    msg.headers.set("To", "<sip:alice@example.com>;tag=new")
    msg.headers.prepend("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1")
    assert msg.to.tag == "new"
    assert [v.host for v in msg.vias] == ["proxy.example.com", "192.0.2.7"]
    assert msg.top_via.branch == "z9hG4bKp1"
    msg.headers.pop_first("Via")
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    msg.headers.remove("Contact")
    assert msg.contacts == []
    msg.headers = Headers([("Via", "SIP/2.0/TCP h;branch=z9hG4bKx")])
    assert msg.top_via.host == "h"
    with pytest.raises(SipParseError, match="Missing To"):
        msg.to  # noqa: B018


def test_auth_and_date_headers_never_split() -> None:
    raw = REGISTER.replace(
        b"Expires: 3600\r\n",
        b'Authorization: Digest username="alice", realm="example.com", nonce="a,b"\r\n'
        b'Proxy-Authenticate: Digest realm="x", qop="auth,auth-int"\r\n'
        b"Proxy-Require: foo, bar\r\n"
        b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n",
    )
    msg = parse_message(raw)
    for name in ("Authorization", "Proxy-Authenticate", "Proxy-Require", "Date"):
        assert msg.headers.count(name) == 1
    assert msg.headers.get("Proxy-Require") == "foo, bar"


def replace_header(raw: bytes, name: str, value: str) -> bytes:
    """Swap the first header line called ``name`` (or Expires if there is none)."""
    lines = raw.split(b"\r\n")
    key = name.encode() + b":"
    index = next((i for i, line in enumerate(lines) if line.startswith(key)), None)
    if index is None:
        index = lines.index(b"Expires: 3600")
    lines[index] = f"{name}: {value}".encode()
    return b"\r\n".join(lines)


def test_small_accessors_and_errors() -> None:
    h = Headers([("Allow", "INVITE"), ("Allow", "ACK"), ("To", "<sip:a@b>")])
    h.set("allow", "BYE")
    assert list(h) == [("Allow", "BYE"), ("To", "<sip:a@b>")]
    assert h.pop_first("From") is None and h.get("From") is None
    assert repr(h).startswith("Headers(")
    msg = parse_message(REGISTER)
    msg.headers.set("Expires", "soon")
    with pytest.raises(SipParseError, match="Expires"):
        msg.expires  # noqa: B018
    for name, value, pattern in [
        ("Call-ID", "has space", "Call-ID"),
        ("CSeq", "1", "CSeq"),
        ("Date", "Mon, 31 Feb 2025 10:00:00 GMT", "no such time"),
        ("Via", "SIP/2.0 UDP host", "Via"),
        ("Via", "SIP/2.0/UDP host;branch", "branch"),
        ("Via", "SIP/2.0/UDP [::1", "Via"),
        ("To", '"Bob" sip:bob@example.com', "after display name"),
    ]:
        raw = replace_header(REGISTER, name, value)
        with pytest.raises(SipParseError, match=pattern):
            parse_message(raw)
    contact = parse_message(REGISTER.replace(b"reg-id=1", b"q=high")).contacts[0]
    assert contact.q is None and contact.reg_id is None


def test_response_model() -> None:
    ok = SipResponse(200, "OK", [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1")])
    assert ok == ok.copy() and ok != SipResponse(200, "Fine", ok.headers)
    assert not ok.provisional and SipResponse(183).provisional
    assert repr(ok) == "<SipResponse 200 OK>"
    assert ok != "SIP/2.0 200 OK"


def test_quote_display_names() -> None:
    name = quote('Bob "the" \\ Builder')
    na = parse_name_addr(f"{name} <sip:bob@example.com>", "From")
    assert na.display == 'Bob "the" \\ Builder'
    assert unquote("plain") == "plain"


def test_more_uri_comparisons() -> None:
    assert parse_uri("sip:a:pw@h").equivalent(parse_uri("sip:a:%70w@h"))
    assert not parse_uri("sip:a:pw@h").equivalent(parse_uri("sip:a:PW@h"))
    assert parse_uri("tel:+1-555-0100").equivalent(parse_uri("TEL:+1-555-0100"))
    assert not parse_uri("tel:+1-555-0100").equivalent(parse_uri("sip:+1-555-0100@h"))
    with pytest.raises(SipParseError, match="Junk"):
        parse_uri("sip:[::1]x")


def test_unquoted_non_ascii_display_name_tolerated() -> None:
    na = parse_name_addr("J\u00f6rg M\u00fcller <sip:joerg@example.com>;tag=1", "From")
    assert na.display == "J\u00f6rg M\u00fcller" and na.tag == "1"
    raw = REGISTER.replace(b"From: <sip:", "From: J\u00f6rg <sip:".encode())
    assert parse_message(raw).from_.display == "J\u00f6rg"
    with pytest.raises(SipParseError):
        parse_name_addr("J\u00f6rg, M <sip:joerg@example.com>", "From")


@pytest.mark.parametrize("name", ["lwsstart", "trws", "lwsruri", "ltgtruri", "escruri"])
def test_garbled_request_line_still_answered(name: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(wire(INVALID[name]))
    response = error_response(info.value, to_tag="t")
    assert response is not None and response.status == 400
    assert response.call_id.startswith(name)


def test_stamp_received_and_response_address() -> None:
    msg = parse_message(REGISTER)  # Via: SIP/2.0/TLS 192.0.2.7:50112;branch=...;rport;alias
    assert isinstance(msg, SipRequest)
    via = stamp_received(msg, "198.51.100.9", 40000)
    assert via.rport == 40000 and via.received == "198.51.100.9"
    assert msg.headers.get("Via") == (
        "SIP/2.0/TLS 192.0.2.7:50112;branch=z9hG4bK776asdhds;rport=40000;alias"
        ";received=198.51.100.9"
    )
    assert response_address(msg.top_via) == ("198.51.100.9", 40000)
    # No rport, same address: nothing to add; a host name always gets received.
    plain = parse_message(REGISTER.replace(b";rport;alias", b""))
    assert isinstance(plain, SipRequest)
    assert stamp_received(plain, "192.0.2.7", 50112).received is None
    assert response_address(plain.top_via) == ("192.0.2.7", 50112)
    named = plain.copy()
    named.headers.replace_first("Via", "SIP/2.0/UDP phone.example.com;branch=z9hG4bKn")
    assert stamp_received(named, "192.0.2.8", 5060).received == "192.0.2.8"
    assert response_address(named.top_via) == ("192.0.2.8", 5060)
    v6 = plain.copy()
    v6.headers.replace_first("Via", "SIP/2.0/UDP [2001:db8::1];branch=z9hG4bKv")
    assert stamp_received(v6, "2001:db8:0::1", 5060).received is None
    assert response_address(v6.top_via) == ("[2001:db8::1]", 5060)
    maddr = Via("UDP", "h.example.com", 5070, (("maddr", "239.1.1.1"),))
    assert response_address(maddr) == ("239.1.1.1", 5070)
    assert response_address(Via("TLS", "h.example.com")) == ("h.example.com", 5061)


def test_error_response_with_a_broken_lower_via() -> None:
    raw = REGISTER.replace(b"Max-Forwards: 70\r\n", b"Via: SIP/2.0/UDP ;;\r\nMax-Forwards: 70\r\n")
    with pytest.raises(SipParseError, match="Via") as info:
        parse_message(raw)
    response = error_response(info.value)
    assert response is not None and response.headers.get_all("Via")[1] == "SIP/2.0/UDP ;;"
