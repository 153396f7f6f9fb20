"""Hypothesis: malformed APNs/FCM requests always get a 4xx and the server keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sim.conftest import BUNDLE, KEY_ID, PROJECT, TEAM_ID, TOKEN
from ucpush.sim.apns import ApnsSimulator
from ucpush.sim.fcm import FcmSimulator

HEADER_NAMES = [
    "apns-topic",
    "apns-push-type",
    "apns-priority",
    "apns-expiration",
    "apns-collapse-id",
    "apns-id",
    "authorization",
    "x-other",
]
# Visible ASCII: what an HTTP/2 client lets through as a header value.
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
path_segments = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?%"), max_size=80
)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@FUZZ
@given(
    prefix=st.sampled_from(["/3/device/", "/3/device", "/3/", "/", "/3/device/" + TOKEN + "/"]),
    segment=path_segments,
    headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values), max_size=8),
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]),
    body=st.binary(max_size=6000),
    valid_auth=st.booleans(),
)
def test_apns_malformed_requests(
    apns_key: tuple[bytes, bytes],
    make_jwt: Callable[..., str],
    prefix: str,
    segment: str,
    headers: list[tuple[str, str]],
    method: str,
    body: bytes,
    valid_auth: bool,
) -> None:
    async def scenario() -> None:
        async with ApnsSimulator() as sim:
            sim.add_signing_key(TEAM_ID, KEY_ID, apns_key[1])
            sim.register_device(TOKEN, BUNDLE)
            request_headers = list(headers)
            if valid_auth:
                request_headers.append(("authorization", f"bearer {make_jwt()}"))
            async with httpx.AsyncClient(http1=False, http2=True) as client:
                response = await client.request(
                    method, sim.url + prefix + segment, headers=request_headers, content=body
                )
                if response.status_code != 200:
                    assert 400 <= response.status_code < 500, response.text
                    assert isinstance(response.json()["reason"], str)
                    assert not sim.delivered
                # Still serving, on the same connection.
                ok = await client.post(
                    f"{sim.url}/3/device/{TOKEN}",
                    content=b"{}",
                    headers={"authorization": f"bearer {make_jwt()}", "apns-topic": BUNDLE},
                )
                assert ok.status_code in (200, 429)  # 429: token changed on this connection

    run(scenario())


@FUZZ
@given(
    project=path_segments,
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=10), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda value: {"message": value}),
        st.dictionaries(
            st.sampled_from(["token", "data", "android", "notification", "topic", "x"]),
            st.one_of(
                st.text(max_size=10),
                st.integers(),
                st.dictionaries(
                    st.text(max_size=5), st.text(max_size=5) | st.integers(), max_size=3
                ),
            ),
            max_size=5,
        ).map(lambda value: {"message": value}),
    ),
    auth=st.sampled_from(["valid", "none", "garbage"]),
)
def test_fcm_malformed_requests(
    service_account_key: tuple[dict[str, str], bytes], project: str, body: Any, auth: str
) -> None:
    async def scenario() -> None:
        async with FcmSimulator() as sim:
            info = service_account_key[0]
            sim.add_service_account(
                info["client_email"], PROJECT, service_account_key[1], info["private_key_id"]
            )
            sim.register_device("tok", PROJECT)
            # Minted directly: a google-auth refresh per example would be slow.
            access = sim.issue_access_token(info["client_email"], PROJECT)
            headers = {
                "valid": {"authorization": f"Bearer {access}"},
                "none": {},
                "garbage": {"authorization": "Bearer zzz"},
            }[auth]
            kwargs: dict[str, Any] = (
                {"content": body} if isinstance(body, bytes) else {"json": body}
            )
            async with httpx.AsyncClient(http1=False, http2=True) as client:
                response = await client.post(
                    f"{sim.url}/v1/projects/{project}/messages:send", headers=headers, **kwargs
                )
                if response.status_code != 200:
                    assert 400 <= response.status_code < 500, response.text
                    assert response.json()["error"]["code"] == response.status_code
                ok = await client.post(
                    f"{sim.url}/v1/projects/{PROJECT}/messages:send",
                    headers={"authorization": f"Bearer {access}"},
                    json={"message": {"token": "tok"}},
                )
                assert ok.status_code == 200

    run(scenario())


header_names = st.one_of(
    st.sampled_from([*HEADER_NAMES, ":path", ":method", ":authority", "connection", "te"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12),
)
raw_values = st.binary(max_size=40)


@FUZZ
@given(
    headers=st.lists(st.tuples(header_names, raw_values), max_size=8),
    path=st.binary(max_size=60),
    garbage=st.binary(max_size=60),
)
def test_apns_raw_h2_headers_never_break_the_server(
    apns_key: tuple[bytes, bytes],
    make_jwt: Callable[..., str],
    headers: list[tuple[str, bytes]],
    path: bytes,
    garbage: bytes,
) -> None:
    """Headers h2 clients refuse to send (bad names, pseudo-headers, bytes) and raw garbage."""

    async def scenario() -> None:
        async with ApnsSimulator() as sim:
            sim.add_signing_key(TEAM_ID, KEY_ID, apns_key[1])
            sim.register_device(TOKEN, BUNDLE)
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            config = h2.config.H2Configuration(
                validate_outbound_headers=False, normalize_outbound_headers=False
            )
            conn = h2.connection.H2Connection(config)
            conn.initiate_connection()
            request = [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"x"),
                (b":path", b"/3/device/" + path),
                *((name.encode(), value) for name, value in headers),
            ]
            conn.send_headers(1, request)
            conn.send_data(1, b"{}", end_stream=True)
            writer.write(conn.data_to_send() + garbage)
            status = None
            with contextlib.suppress(h2.exceptions.ProtocolError, ConnectionError):
                while status is None:
                    data = await asyncio.wait_for(reader.read(65535), 5)
                    if not data:
                        break  # the server dropped a protocol violation
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.ResponseReceived):
                            status = int(dict(event.headers)[b":status"])
                        elif isinstance(
                            event, h2.events.StreamReset | h2.events.ConnectionTerminated
                        ):
                            status = 0
            writer.close()
            assert status is None or status == 0 or 400 <= status < 500
            assert sim.server.handler_errors == 0
            assert not sim.delivered
            async with httpx.AsyncClient(http1=False, http2=True) as client:
                ok = await client.post(
                    f"{sim.url}/3/device/{TOKEN}",
                    content=b"{}",
                    headers={"authorization": f"bearer {make_jwt()}", "apns-topic": BUNDLE},
                )
                assert ok.status_code == 200

    run(scenario())
