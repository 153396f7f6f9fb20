"""Runtime-generated credentials have the shapes Apple and Google tools expect."""

from __future__ import annotations

import ssl

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.oauth2 import service_account

from ucpush.sim.apns import ApnsSimulator
from ucpush.sim.credentials import (
    FCM_SCOPE,
    make_apns_key,
    make_server_tls,
    make_service_account,
)


def test_apns_key_is_p8_p256() -> None:
    private_pem, public_pem = make_apns_key()
    key = serialization.load_pem_private_key(private_pem, None)
    pkcs8 = key.private_bytes(  # PKCS#8 PEM, like Apple's .p8
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert private_pem == pkcs8
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    token = jwt.encode({"iss": "T", "iat": 1}, private_pem, "ES256", headers={"kid": "K"})
    assert jwt.decode(token, public_pem, algorithms=["ES256"])["iss"] == "T"
    assert make_apns_key()[0] != private_pem


def test_service_account_accepted_by_google_auth() -> None:
    info, public_pem = make_service_account("proj", "https://sim.invalid/token")
    credentials = service_account.Credentials.from_service_account_info(info, scopes=[FCM_SCOPE])
    assert credentials.service_account_email == "ucpush-sim@proj.iam.gserviceaccount.com"
    assert credentials.project_id == "proj"
    assert info["token_uri"] == "https://sim.invalid/token"
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    custom, _ = make_service_account("proj", "https://x/token", client_email="a@b.c")
    assert custom["client_email"] == "a@b.c"
    assert custom["private_key_id"] != info["private_key_id"]


async def test_server_tls_context_serves_h2() -> None:
    server_context, ca_pem = make_server_tls(["127.0.0.1", "localhost"])
    client_context = ssl.create_default_context(cadata=ca_pem.decode())
    async with (
        ApnsSimulator(ssl_context=server_context) as sim,
        httpx.AsyncClient(http2=True, verify=client_context) as client,
    ):
        response = await client.get(sim.url + "/_sim/health")
    assert response.http_version == "HTTP/2"
    assert response.json() == {"status": "ok"}
