"""Digest authentication: RFC 7616 test vectors, challenges, verification, parser fuzzing."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucpush.sip.digest import (
    MD5,
    SHA256,
    DigestAuth,
    DigestCredentials,
    DigestParseError,
    Outcome,
    compute_ha1,
    compute_response,
    parse_credentials,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
REALM = "example.org"
URI = "sip:example.org"

# RFC 7616 §3.9.1
RFC_USER = "Mufasa"
RFC_REALM = "http-auth@example.org"
RFC_PASSWORD = "Circle of Life"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_RESPONSES = {
    MD5: "8ca523f5e9506fed4657c9700eebdbec",
    SHA256: "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def rfc_header(algorithm: str) -> str:
    return (
        f'Digest username="{RFC_USER}", realm="{RFC_REALM}", uri="/dir/index.html", '
        f'algorithm={algorithm}, nonce="{RFC_NONCE}", nc=00000001, cnonce="{RFC_CNONCE}", '
        f'qop=auth, response="{RFC_RESPONSES[algorithm]}", opaque="{RFC_OPAQUE}"'
    )


@pytest.mark.parametrize("algorithm", [MD5, SHA256])
def test_rfc7616_vectors(algorithm: str) -> None:
    creds = parse_credentials(rfc_header(algorithm))
    assert creds == DigestCredentials(
        username=RFC_USER,
        realm=RFC_REALM,
        nonce=RFC_NONCE,
        uri="/dir/index.html",
        response=RFC_RESPONSES[algorithm],
        algorithm=algorithm,
        qop="auth",
        nc="00000001",
        cnonce=RFC_CNONCE,
        opaque=RFC_OPAQUE,
    )
    ha1 = compute_ha1(RFC_USER, RFC_REALM, RFC_PASSWORD, algorithm)
    assert (
        compute_response(
            ha1,
            algorithm,
            method="GET",
            uri=creds.uri,
            nonce=creds.nonce,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        == RFC_RESPONSES[algorithm]
    )


def test_rfc2617_md5_vector() -> None:
    # RFC 2617 §3.5: same nonce and cnonce, MD5 and qop=auth.
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life", MD5)
    response = compute_response(
        ha1,
        MD5,
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


# Challenges and verification


@pytest.fixture
def auth() -> DigestAuth:
    return DigestAuth(b"k" * 32, REALM, nonce_ttl=300)


HA1 = {
    MD5: compute_ha1("alice", REALM, "secret", MD5),
    SHA256: compute_ha1("alice", REALM, "secret", SHA256),
}


def answer(
    auth: DigestAuth,
    *,
    algorithm: str = SHA256,
    password: str = "secret",
    issued: datetime = NOW,
    nc: str = "00000001",
    uri: str = URI,
    method: str = "REGISTER",
    realm: str = REALM,
    nonce: str | None = None,
) -> DigestCredentials:
    """What a UA sends back to a challenge issued at ``issued`` (or carrying ``nonce``)."""
    nonce = nonce or auth.make_nonce(issued)
    ha1 = compute_ha1("alice", realm, password, algorithm)
    response = compute_response(
        ha1, algorithm, method=method, uri=uri, nonce=nonce, qop="auth", nc=nc, cnonce="abc"
    )
    return DigestCredentials("alice", realm, nonce, uri, response, algorithm, "auth", nc, "abc")


def verify(auth: DigestAuth, creds: DigestCredentials, now: datetime = NOW) -> Outcome:
    return auth.verify(creds, method="REGISTER", request_uri=URI, ha1=HA1, now=now).outcome


def test_challenge_offers_sha256_then_md5(auth: DigestAuth) -> None:
    headers = auth.challenge(NOW)
    assert [name for name, _ in headers] == ["WWW-Authenticate"] * 2
    values = [value for _, value in headers]
    assert len(values) == 2
    assert "algorithm=SHA-256" in values[0] and "algorithm=MD5" in values[1]
    for value in values:
        assert value.startswith('Digest realm="example.org", nonce="')
        assert 'qop="auth"' in value and "stale" not in value
    assert all("stale=true" in v for _, v in auth.challenge(NOW, stale=True))
    proxy = auth.challenge(NOW, proxy=True)
    assert [name for name, _ in proxy] == ["Proxy-Authenticate"] * 2
    nonces = [re.search(r'nonce="([^"]+)"', v).group(1) for _, v in proxy]  # type: ignore[union-attr]
    assert nonces[0] == nonces[1]  # both algorithms of one challenge share its nonce


def test_challenge_nonce_is_accepted_back(auth: DigestAuth) -> None:
    later = NOW + timedelta(seconds=10)
    m = re.search(r'nonce="([^"]+)"', auth.challenge(NOW)[0][1])
    assert m is not None
    assert verify(auth, answer(auth, nonce=m.group(1)), later) is Outcome.OK


@pytest.mark.parametrize("algorithm", [SHA256, MD5])
def test_verify_ok(auth: DigestAuth, algorithm: str) -> None:
    assert verify(auth, answer(auth, algorithm=algorithm)) is Outcome.OK


def test_algorithm_name_is_case_insensitive(auth: DigestAuth) -> None:
    creds = answer(auth)
    assert verify(auth, replace(creds, algorithm="sha-256")) is Outcome.OK


def test_wrong_password(auth: DigestAuth) -> None:
    verdict = auth.verify(
        answer(auth, password="guess"), method="REGISTER", request_uri=URI, ha1=HA1, now=NOW
    )
    assert not verdict.ok and not verdict.stale
    assert verdict.reason == "wrong response (bad password)"


def test_wrong_method_or_uri(auth: DigestAuth) -> None:
    assert verify(auth, answer(auth, method="INVITE")) is Outcome.RESPONSE
    assert verify(auth, answer(auth, uri="sip:other.org")) is Outcome.URI


def test_equivalent_uri_accepted(auth: DigestAuth) -> None:
    assert verify(auth, answer(auth, uri="sip:EXAMPLE.org")) is Outcome.OK


def test_wrong_realm(auth: DigestAuth) -> None:
    assert verify(auth, answer(auth, realm="other.org")) is Outcome.REALM


def test_stale_nonce(auth: DigestAuth) -> None:
    creds = answer(auth, issued=NOW - timedelta(seconds=301))
    verdict = auth.verify(creds, method="REGISTER", request_uri=URI, ha1=HA1, now=NOW)
    assert verdict.stale and verdict.reason == "nonce expired"
    assert verify(auth, answer(auth, issued=NOW - timedelta(seconds=300))) is Outcome.OK


def test_stale_nonce_with_wrong_password_is_not_stale(auth: DigestAuth) -> None:
    creds = answer(auth, issued=NOW - timedelta(seconds=999), password="guess")
    assert verify(auth, creds) is Outcome.RESPONSE


def test_nonce_from_the_future(auth: DigestAuth) -> None:
    assert verify(auth, answer(auth, issued=NOW + timedelta(seconds=3600))) is Outcome.NONCE


def test_forged_nonce(auth: DigestAuth) -> None:
    other = DigestAuth(b"x" * 32, REALM)
    assert verify(auth, answer(other)) is Outcome.NONCE
    creds = answer(auth)
    assert verify(auth, replace(creds, nonce="not base64 !")) is Outcome.NONCE
    assert verify(auth, replace(creds, nonce="AAAA")) is Outcome.NONCE


def test_nonce_from_another_node_with_the_same_secret(auth: DigestAuth) -> None:
    assert verify(DigestAuth(b"k" * 32, REALM), answer(auth)) is Outcome.OK


def test_replayed_nonce_count(auth: DigestAuth) -> None:
    nonce = auth.make_nonce(NOW)
    assert verify(auth, answer(auth, nc="00000001", nonce=nonce)) is Outcome.OK
    assert verify(auth, answer(auth, nc="00000001", nonce=nonce)) is Outcome.REPLAY
    assert verify(auth, answer(auth, nc="00000002", nonce=nonce)) is Outcome.OK


def test_replay_cache_is_bounded() -> None:
    auth = DigestAuth(b"k" * 32, REALM, replay_cache=2)
    for seconds in range(5):
        assert verify(auth, answer(auth, issued=NOW - timedelta(seconds=seconds))) is Outcome.OK
    assert len(auth._counts) == 2


def test_qop_rules(auth: DigestAuth) -> None:
    creds = answer(auth)
    assert verify(auth, replace(creds, qop="auth-int")) is Outcome.QOP
    legacy = replace(creds, qop=None, nc=None, cnonce=None)
    assert verify(auth, legacy) is Outcome.QOP
    lenient = DigestAuth(b"k" * 32, REALM, require_qop=False)
    legacy = replace(
        legacy,
        response=compute_response(
            HA1[SHA256], SHA256, method="REGISTER", uri=URI, nonce=creds.nonce
        ),
    )
    assert verify(lenient, legacy) is Outcome.OK


def test_unsupported_algorithm_and_userhash(auth: DigestAuth) -> None:
    creds = answer(auth)
    assert verify(auth, replace(creds, algorithm="SHA-512-256")) is Outcome.ALGORITHM
    assert verify(auth, replace(creds, userhash=True)) is Outcome.USERHASH
    md5_only = DigestAuth(b"k" * 32, REALM, algorithms=(MD5,))
    assert verify(md5_only, answer(md5_only)) is Outcome.ALGORITHM
    assert verify(md5_only, answer(md5_only, algorithm=MD5)) is Outcome.OK


def test_missing_stored_hash(auth: DigestAuth) -> None:
    outcome = auth.verify(
        answer(auth), method="REGISTER", request_uri=URI, ha1={MD5: HA1[MD5]}, now=NOW
    ).outcome
    assert outcome is Outcome.NO_HA1


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        DigestAuth(b"", REALM)
    with pytest.raises(ValueError):
        DigestAuth(b"k", REALM, algorithms=("SHA-1",))


# Parser


def test_parse_minimal_and_defaults() -> None:
    creds = parse_credentials(
        'Digest username="bob",realm="r",nonce="n",uri="sip:r",response="ABCDEF"'
    )
    assert creds.algorithm == MD5 and creds.qop is None and creds.nc is None
    assert creds.response == "abcdef"


def test_parse_quoted_pairs_and_scheme_case() -> None:
    creds = parse_credentials(
        r'DIGEST username="a\"b\\c" , realm="r", nonce="n", uri="sip:r", response="00", '
        'qop="auth", nc=0000000a, cnonce="c", userhash=TRUE'
    )
    assert creds.username == 'a"b\\c'
    assert creds.qop == "auth" and creds.nc == "0000000a" and creds.userhash


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Basic dXNlcjpwYXNz", "not Digest credentials"),
        ("Digest", "not Digest credentials"),
        ('Digest username="a"', "missing realm, nonce, uri, response"),
        ('Digest username="a", username="b"', "duplicate parameter 'username'"),
        ('Digest username="a" realm="r"', "expected ','"),
        ('Digest username="a, realm=r', "malformed parameter"),
        ('Digest username="a",', "malformed parameter"),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="00", qop=auth',
            "qop given without nc and cnonce",
        ),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="00", qop=auth, '
            'nc=1, cnonce="c"',
            "nc must be 8 hex digits",
        ),
        ('Digest username="a", realm="r", nonce="n", uri="u", response="xyz"', "not hex"),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="00", userhash=maybe',
            "userhash must be",
        ),
    ],
)
def test_parse_errors(value: str, reason: str) -> None:
    with pytest.raises(DigestParseError) as info:
        parse_credentials(value)
    assert reason in info.value.reason


_PIECES = st.sampled_from(
    [
        "Digest ",
        "digest",
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "qop",
        "nc",
        "cnonce",
        "algorithm",
        "userhash",
        "=",
        ",",
        '"',
        "\\",
        " ",
        "\t",
        "auth",
        "00000001",
        "SHA-256",
        "true",
        "abc",
        "\r\n",
        "\x00",
        "é",
    ]
)


@given(st.lists(_PIECES, max_size=40).map("".join) | st.text(max_size=200))
def test_fuzz_parse_only_raises_parse_error(value: str) -> None:
    try:
        creds = parse_credentials(value)
    except DigestParseError as exc:
        assert exc.reason
    else:
        assert creds.username is not None


@given(
    st.dictionaries(
        st.sampled_from(["username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce"]),
        st.text(max_size=20),
        min_size=5,
    )
)
def test_fuzz_verify_never_raises(params: dict[str, str]) -> None:
    auth = DigestAuth(b"k" * 32, REALM)
    value = "Digest " + ", ".join(
        f'{k}="{v.replace(chr(92), "").replace(chr(34), "")}"' for k, v in params.items()
    )
    try:
        creds = parse_credentials(value)
    except DigestParseError:
        return
    assert not auth.verify(creds, method="REGISTER", request_uri=URI, ha1=HA1, now=NOW).ok


def test_two_challenges_in_the_same_second_get_different_nonces():
    auth = DigestAuth(b"s" * 32, REALM)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    first, second = auth.make_nonce(now), auth.make_nonce(now)
    assert first != second
    assert auth._nonce_age(first, now) == 0 and auth._nonce_age(second, now) == 0
