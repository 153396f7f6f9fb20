"""Sans-IO parts of the proxy support: settings, challenges, digest, the CONNECT exchange."""

from __future__ import annotations

import httpx
import pytest

from ucpush.relay.proxy import (
    ConnectExchange,
    DigestChallenge,
    ProxySettings,
    basic_authorization,
    digest_authorization,
    parse_challenges,
    pick_digest,
)

# RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
RFC7616 = {
    "realm": "http-auth@example.org",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    "qop": "auth, auth-int",
}
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def _answer(challenge: DigestChallenge, **overrides: object) -> dict[str, str]:
    arguments: dict[str, object] = {
        "username": "Mufasa",
        "password": "Circle of Life",
        "method": "GET",
        "uri": "/dir/index.html",
        "nc": 1,
        "cnonce": RFC7616_CNONCE,
    }
    arguments.update(overrides)
    header = digest_authorization(challenge, **arguments)  # type: ignore[arg-type]
    assert header.startswith("Digest ")
    [(_, fields)] = parse_challenges([header])
    return fields


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_digest_answers_match_rfc7616_examples(algorithm: str, response: str):
    challenge = DigestChallenge.from_params({**RFC7616, "algorithm": algorithm})
    fields = _answer(challenge)
    assert fields["response"] == response
    assert fields["qop"] == "auth"
    assert fields["nc"] == "00000001"
    assert fields["cnonce"] == RFC7616_CNONCE
    assert fields["opaque"] == RFC7616["opaque"]
    assert fields["algorithm"] == algorithm
    assert fields["uri"] == "/dir/index.html"


def test_digest_answer_matches_rfc2617_example():
    challenge = DigestChallenge.from_params(
        {
            "realm": "testrealm@host.com",
            "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "qop": "auth",
        }
    )
    fields = _answer(challenge, password="Circle Of Life", cnonce="0a4f113b")
    assert fields["response"] == "6629fae49393a05397450978507c4ef1"


def test_digest_sess_and_userhash_change_the_answer():
    plain = DigestChallenge.from_params({**RFC7616, "algorithm": "SHA-256"})
    sess = DigestChallenge.from_params({**RFC7616, "algorithm": "SHA-256-sess"})
    hashed = DigestChallenge.from_params({**RFC7616, "algorithm": "SHA-256", "userhash": "true"})
    assert _answer(sess)["response"] != _answer(plain)["response"]
    fields = _answer(hashed)
    assert fields["userhash"] == "true"
    # RFC 7616 §3.9.2: username = H(username ":" realm)
    assert fields["username"] != "Mufasa" and len(fields["username"]) == 64


def test_digest_answer_quotes_and_escapes_values():
    challenge = DigestChallenge.from_params({"realm": 'a "quoted" realm', "nonce": "n"})
    fields = _answer(challenge, username='we\\ird"user')
    assert fields["realm"] == 'a "quoted" realm'
    assert fields["username"] == 'we\\ird"user'
    assert "qop" not in fields  # RFC 2069 server: no qop, no nc/cnonce


def test_unsupported_digest_challenge_is_refused():
    challenge = DigestChallenge.from_params({"realm": "r", "nonce": "n", "algorithm": "SHA-512"})
    assert not challenge.supported
    with pytest.raises(ValueError, match="unsupported digest challenge"):
        _answer(challenge)


def test_basic_authorization():
    assert basic_authorization("alice", "open sesame") == "Basic YWxpY2U6b3BlbiBzZXNhbWU="


def test_challenges_in_separate_and_combined_headers():
    squid = [
        'Basic realm="ucpush-test"',
        'Digest realm="ucpush-test", nonce="16c37901", qop="auth", stale=false',
    ]
    assert parse_challenges(squid) == [
        ("basic", {"realm": "ucpush-test"}),
        ("digest", {"realm": "ucpush-test", "nonce": "16c37901", "qop": "auth", "stale": "false"}),
    ]
    combined = [
        'Basic realm="a, b", DIGEST Realm="x", nonce="n\\"q", qop="auth,auth-int", '
        "algorithm=SHA-256, Negotiate"
    ]
    assert parse_challenges(combined) == [
        ("basic", {"realm": "a, b"}),
        ("digest", {"realm": "x", "nonce": 'n"q', "qop": "auth,auth-int", "algorithm": "SHA-256"}),
        ("negotiate", {}),
    ]


@pytest.mark.parametrize("header", ['realm="x"', 'Digest realm="unterminated', "Digest ("])
def test_malformed_challenge_is_a_clear_error(header: str):
    with pytest.raises(ValueError, match="malformed Proxy-Authenticate header"):
        parse_challenges([header])


def test_pick_digest_prefers_sha256_and_skips_what_it_cannot_answer():
    offered = parse_challenges(
        [
            'Digest realm="r", nonce="md5", qop="auth"',
            'Digest realm="r", nonce="sha", qop="auth", algorithm=SHA-256',
            'Digest realm="r", nonce="int", qop="auth-int", algorithm=SHA-256',
            'Digest realm="r", nonce="512", qop="auth", algorithm=SHA-512-256',
            'Digest realm="r"',
            'Basic realm="r"',
        ]
    )
    chosen = pick_digest(offered)
    assert chosen is not None and chosen.nonce == "sha"
    assert pick_digest(parse_challenges(['Basic realm="r"'])) is None


def test_connect_exchange_request_and_407_answer_in_pieces():
    exchange = ConnectExchange("relay.example:443", "Basic YWxpY2U6eA==")
    assert exchange.request.startswith(b"CONNECT relay.example:443 HTTP/1.1\r\n")
    assert b"\r\nhost: relay.example:443\r\n" in exchange.request.lower()
    assert b"Proxy-Authorization: Basic YWxpY2U6eA==\r\n" in exchange.request
    raw = (
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="r"\r\n'
        b'Proxy-Authenticate: Digest realm="r", nonce="n"\r\n'
        b"Content-Length: 5\r\n\r\nerror"
    )
    assert exchange.receive(raw[:20]) is None
    answer = exchange.receive(raw[20:])
    assert answer is not None and answer.status == 407
    assert answer.header_values("proxy-authenticate") == [
        'Basic realm="r"',
        'Digest realm="r", nonce="n"',
    ]


def test_connect_exchange_established_after_an_interim_answer():
    exchange = ConnectExchange("127.0.0.1:8443")
    assert b"Proxy-Authorization" not in exchange.request
    assert exchange.receive(b"HTTP/1.1 100 Continue\r\n\r\n") is None
    answer = exchange.receive(b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert answer is not None and answer.status == 200


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "malformed answer to CONNECT"),
        (b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01", "sent data into the tunnel"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection before answering"),
        (b"", "closed the connection before answering"),
    ],
)
def test_connect_exchange_bad_answers_are_proxy_errors(raw: bytes, message: str):
    exchange = ConnectExchange("relay:443")
    with pytest.raises(httpx.ProxyError, match=message):
        exchange.receive(raw)
        exchange.receive(b"")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "socks5"}, "scheme must be http or https"),
        ({"host": "user@proxy"}, "proxy host"),
        ({"host": ""}, "proxy host"),
        ({"port": 0}, "port must be 1..65535"),
        ({"auth": "ntlm"}, "auth must be basic, digest or none"),
        ({"auth": "digest", "username": ""}, "needs a username"),
        ({"auth": "basic", "username": "a:b"}, "cannot contain ':'"),
    ],
)
def test_proxy_settings_are_validated(kwargs: dict[str, object], message: str):
    base: dict[str, object] = {
        "scheme": "http",
        "host": "proxy.example",
        "port": 3128,
        "username": "u",
        "password": "p",
        "auth": "basic",
    }
    with pytest.raises(ValueError, match=message):
        ProxySettings(**{**base, **kwargs})  # type: ignore[arg-type]


def test_proxy_settings_hide_the_password():
    settings = ProxySettings("https", "::1", 3128, "u", "hunter2", "digest")
    assert "hunter2" not in repr(settings)
    assert settings.address == "https://[::1]:3128"
