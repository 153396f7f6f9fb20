import contextlib
import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwe as rfc_jwe
from joserfc.jwk import OctKey

from ucpush.crypto import jwe

KEY = bytes(range(32))


def test_round_trip_and_kid():
    token = jwe.encrypt(b'{"call":"1"}', KEY, kid="k2")
    parsed = jwe.parse_compact(token)
    assert parsed.header == {"alg": "dir", "enc": "A256GCM", "kid": "k2"}
    assert jwe.decrypt(token, KEY) == b'{"call":"1"}'


def test_interoperates_with_joserfc_both_ways():
    key = OctKey.import_key(KEY)
    ours = jwe.encrypt(b"hello", KEY)
    assert rfc_jwe.decrypt_compact(ours, key).plaintext == b"hello"
    theirs = rfc_jwe.encrypt_compact({"alg": "dir", "enc": "A256GCM"}, b"world", key)
    assert jwe.decrypt(theirs, KEY) == b"world"


def test_wrong_key_and_tampering_are_detected():
    token = jwe.encrypt(b"secret", KEY)
    with pytest.raises(jwe.JweDecryptError):
        jwe.decrypt(token, os.urandom(32))
    parts = token.split(".")
    parts[3] = parts[3][:-1] + ("A" if parts[3][-1] != "A" else "B")
    with pytest.raises(jwe.JweError):
        jwe.decrypt(".".join(parts), KEY)


def _header(**h: object) -> str:
    return jwe.b64url_encode(json.dumps(h).encode()).decode()


GOOD = jwe.encrypt(b"x" * 10, KEY).split(".")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("plaintext payload", "5 dot-separated parts"),
        ('{"aps":{}}', "5 dot-separated parts"),
        (".".join([_header(alg="RSA-OAEP", enc="A256GCM"), *GOOD[1:]]), "alg must be 'dir'"),
        (".".join([_header(alg="dir", enc="A128GCM"), *GOOD[1:]]), "enc must be 'A256GCM'"),
        (".".join([_header(alg="dir", enc="A256GCM", zip="DEF"), *GOOD[1:]]), "zip"),
        (".".join([GOOD[0], "AAAA", *GOOD[2:]]), "encrypted key must be empty"),
        (".".join([*GOOD[:2], "AAAA", *GOOD[3:]]), "IV must be 12 bytes"),
        (".".join([*GOOD[:3], "", GOOD[4]]), "ciphertext is empty"),
        (".".join([*GOOD[:4], "AAAA"]), "tag must be 16 bytes"),
        (".".join([*GOOD[:3], "a+b/", GOOD[4]]), "ciphertext is not base64url"),
        (".".join(["bm90IGpzb24", *GOOD[1:]]), "not JSON"),
        (".".join([jwe.b64url_encode(b"[1]").decode(), *GOOD[1:]]), "not a JSON object"),
    ],
)
def test_malformed_tokens_are_rejected_with_reason(token, message):
    with pytest.raises(jwe.JweError, match=message):
        jwe.parse_compact(token)


def test_key_length_is_checked():
    with pytest.raises(ValueError, match="32 bytes"):
        jwe.encrypt(b"x", b"short")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_jwe_error(data):
    with contextlib.suppress(jwe.JweError):
        jwe.parse_compact(data)


@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_jwe_error(text):
    with contextlib.suppress(jwe.JweError):
        jwe.parse_compact(text)


@given(st.binary(min_size=1, max_size=2000))
def test_any_plaintext_round_trips(plaintext):
    token = jwe.encrypt(plaintext, KEY)
    assert jwe.decrypt(token, KEY) == plaintext
