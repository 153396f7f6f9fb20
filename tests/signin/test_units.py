"""Password hashes, access tokens and client configuration parameters on their own."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucpush.crypto.secretfile import load_or_create_secret
from ucpush.signin.clientconfig import (
    ConfigError,
    merge,
    parse_ssid_list,
    provisioned_ssids,
    render_xml,
    validate_params,
)
from ucpush.signin.passwords import hash_password, verify_password
from ucpush.signin.tokens import TokenError, TokenSigner

SECRET = b"s" * 64


def test_password_hash_is_salted_scrypt() -> None:
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second  # per-user salt
    assert first.startswith("scrypt$16384$8$1$") and "pw" not in first.split("$", 4)[-1]
    assert verify_password("pw", first) and verify_password("pw", second)
    assert not verify_password("pW", first)


@pytest.mark.parametrize(
    "stored", ["", "plain", "bcrypt$1$2$3$YQ==$YQ==", "scrypt$x$8$1$YQ==$YQ==", "scrypt$2$8$1$!$!"]
)
def test_malformed_hash_never_matches(stored: str) -> None:
    assert not verify_password("pw", stored)


def test_tokens_round_trip_and_expire() -> None:
    signer = TokenSigner(SECRET, "node")
    now = time.time()
    token = signer.issue("u1", "iphone-1", now, 60)
    claims = signer.verify(token, now + 59)
    assert (claims.user_id, claims.device_id, claims.expires_at) == (
        "u1",
        "iphone-1",
        int(now) + 60,
    )
    assert claims.issued_at == pytest.approx(now, abs=0.001)
    with pytest.raises(TokenError) as caught:
        signer.verify(token, int(now) + 60)
    assert caught.value.expired
    for bad in (
        TokenSigner(b"t" * 32, "node").issue("u1", "", now, 60),  # other secret
        TokenSigner(SECRET, "other").issue("u1", "", now, 60),  # other issuer
        jwt.encode({"iss": "node", "sub": "u1", "iat": now, "exp": now + 60}, SECRET, "HS512"),
        jwt.encode({"iss": "node", "sub": 5, "iat": now, "exp": int(now) + 60}, SECRET, "HS256"),
        jwt.encode({"iss": "node", "sub": "u1", "iat": now}, SECRET, "HS256"),
        "garbage",
    ):
        with pytest.raises(TokenError) as caught:
            signer.verify(bad, now)
        assert not caught.value.expired


def test_secret_file_created_private_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "signin-secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 32 and load_or_create_secret(path) == secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_or_create_secret(path)


@pytest.mark.parametrize(
    ("value", "ssids"),
    [
        ("", []),
        ("Ward4", ["Ward4"]),
        (";".join(f"S{i}" for i in range(10)), [f"S{i}" for i in range(10)]),
    ],
)
def test_ssid_list(value: str, ssids: list[str]) -> None:
    assert parse_ssid_list(value) == ssids


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (";".join(f"S{i}" for i in range(11)), "at most 10 SSIDs, got 11"),
        ("Ward4;", "SSID 2 is empty"),
        ("Ward 4", "SSID 1 must be 1-32 letters and digits"),
        ("Ward4,Ward5", "SSID 1 must be 1-32 letters and digits"),
        ("W" * 33, "SSID 1 must be 1-32 letters and digits"),
        ("Wärd", "SSID 1 must be"),
        ("A;A", "listed twice"),
    ],
)
def test_ssid_list_errors(value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_ssid_list(value)
    with pytest.raises(ConfigError, match="LocalPushSSIDList"):
        validate_params({"LocalPushSSIDList": value})


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"Bad Key": "x"}, "use Section.Name or Name"),
        ({"a.b.c d": "x"}, "use Section.Name or Name"),
        ({"xml:lang": "x"}, "use Section.Name or Name"),
        ({"Key": "\x00"}, "control characters"),
        ({"Key": "x" * 5000}, "longer than 4096"),
    ],
)
def test_param_errors(params: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        validate_params(params)


def test_merge_later_wins_and_sections() -> None:
    merged = merge(
        [
            {"LocalPushSSIDList": "A;B", "Options.X": "1"},
            {"Phone.LocalPushSSIDList": "C", "Y": "2"},
        ]
    )
    assert merged == {
        ("Phone", "LocalPushSSIDList"): "C",
        ("Options", "X"): "1",
        ("Client", "Y"): "2",
    }
    assert provisioned_ssids(merged) == ["C"]
    assert render_xml(merged) == (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        '<config version="1.0"><Phone><LocalPushSSIDList>C</LocalPushSSIDList></Phone>'
        "<Options><X>1</X></Options><Client><Y>2</Y></Client></config>"
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_ssid_parser_accepts_or_explains(value: str) -> None:
    try:
        ssids = parse_ssid_list(value)
    except ConfigError as exc:
        assert str(exc).startswith("LocalPushSSIDList: ")
    else:
        assert len(ssids) <= 10 and ";".join(ssids) == value
        assert all(s.isascii() and s.isalnum() for s in ssids)
