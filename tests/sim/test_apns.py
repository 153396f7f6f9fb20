"""APNs simulator over the network: Apple's status codes and reasons, recording, faults."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import jwt
import pytest

from tests.sim.conftest import BUNDLE, KEY_ID, SANDBOX_TOKEN, TEAM_ID, TOKEN, ApnsEnv
from ucpush.sim.apns import ApnsSimulator
from ucpush.sim.common import Fault
from ucpush.sim.credentials import make_apns_key


def reason(response: httpx.Response) -> str:
    return response.json()["reason"]


async def test_success_records_exact_payload(apns: ApnsEnv) -> None:
    payload = b'{ "aps" : {"alert":"caf\xc3\xa9"},  "x": 1 }'
    apns_id = str(uuid.uuid4())
    response = await apns.push(
        payload=payload,
        **{
            "apns-id": apns_id,
            "apns-expiration": "0",
            "apns-collapse-id": "call-1",
            "apns-priority": "5",
        },
    )
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert response.headers["apns-id"] == apns_id
    assert response.content == b""
    [delivery] = apns.sim.delivered
    assert delivery.payload == payload
    assert (delivery.token, delivery.topic, delivery.push_type) == (TOKEN, BUNDLE, "alert")
    assert (delivery.priority, delivery.expiration, delivery.collapse_id) == (5, 0, "call-1")
    assert delivery.apns_id == apns_id
    assert delivery.environment == "production"
    assert delivery.received_at == apns.clock()


async def test_generated_apns_id_and_defaults(apns: ApnsEnv) -> None:
    response = await apns.push(**{"apns-push-type": None, "apns-priority": None})
    assert response.status_code == 200
    generated = response.headers["apns-id"]
    assert uuid.UUID(generated)
    [delivery] = apns.sim.delivered
    assert (delivery.apns_id, delivery.push_type, delivery.priority) == (generated, "alert", 10)
    assert delivery.expiration is None and delivery.collapse_id is None


async def test_voip_push(apns: ApnsEnv) -> None:
    payload = b'{"x":"' + b"v" * 5000 + b'"}'
    response = await apns.push(
        payload=payload, **{"apns-topic": BUNDLE + ".voip", "apns-push-type": "voip"}
    )
    assert response.status_code == 200, response.text
    assert apns.sim.delivered[0].topic == BUNDLE + ".voip"


async def test_method_and_path(apns: ApnsEnv) -> None:
    response = await apns.client.get(f"{apns.sim.url}/3/device/{TOKEN}", headers=apns.headers())
    assert (response.status_code, reason(response)) == (405, "MethodNotAllowed")
    assert uuid.UUID(response.headers["apns-id"])
    for path in ("/3/devices/x", "/2/device/" + TOKEN, f"/3/device/{TOKEN}/extra", "/"):
        response = await apns.client.post(
            apns.sim.url + path, content=b"{}", headers=apns.headers()
        )
        assert (response.status_code, reason(response)) == (404, "BadPath"), path
    response = await apns.client.post(
        f"{apns.sim.url}/3/device/", content=b"{}", headers=apns.headers()
    )
    assert (response.status_code, reason(response)) == (400, "MissingDeviceToken")


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("zz" * 32, "BadDeviceToken"),  # not hex
        ("cd" * 32, "BadDeviceToken"),  # unknown
        (SANDBOX_TOKEN, "BadDeviceToken"),  # sandbox token sent to production
    ],
)
async def test_bad_device_token(apns: ApnsEnv, token: str, expected: str) -> None:
    response = await apns.push(token=token)
    assert (response.status_code, reason(response)) == (400, expected)
    assert not apns.sim.delivered


async def test_environment_mix_up_both_ways(apns: ApnsEnv) -> None:
    sandbox_client_url = f"{apns.sandbox.url}/3/device/"
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        wrong = await client.post(sandbox_client_url + TOKEN, content=b"{}", headers=apns.headers())
        right = await client.post(
            sandbox_client_url + SANDBOX_TOKEN, content=b"{}", headers=apns.headers()
        )
    assert (wrong.status_code, reason(wrong)) == (400, "BadDeviceToken")
    assert right.status_code == 200
    assert right.headers["apns-unique-id"]
    assert apns.sandbox.delivered[0].environment == "sandbox"


async def test_unregistered(apns: ApnsEnv) -> None:
    apns.sim.unregister_device(TOKEN, timestamp_ms=1_700_000_000_123)
    response = await apns.push()
    assert response.status_code == 410
    assert response.json() == {"reason": "Unregistered", "timestamp": 1_700_000_000_123}
    assert not apns.sim.delivered


async def test_unregistered_default_timestamp(apns: ApnsEnv) -> None:
    apns.sim.unregister_device(TOKEN)
    response = await apns.push()
    assert response.json()["timestamp"] == int(apns.clock() * 1000)


async def test_provider_token_errors(apns: ApnsEnv) -> None:
    other_private, _ = make_apns_key()
    cases = {
        "MissingProviderToken": {"authorization": None},
        "InvalidProviderToken": {"authorization": "bearer not.a.jwt"},
    }
    for expected, headers in cases.items():
        response = await apns.push(**headers)
        assert (response.status_code, reason(response)) == (403, expected)
    invalid = [
        apns.make_jwt(key=other_private),  # bad signature
        apns.make_jwt(team_id="OTHERTEAM1"),  # unknown team
        apns.make_jwt(key_id="OTHERKEY12"),  # unknown key id
        "basic dXNlcjpwYXNz",
    ]
    for token in invalid:
        auth = token if token.startswith("basic") else f"bearer {token}"
        response = await apns.push(authorization=auth)
        assert (response.status_code, reason(response)) == (403, "InvalidProviderToken"), token


async def test_wrong_algorithm(apns: ApnsEnv) -> None:
    token = jwt.encode(
        {"iss": TEAM_ID, "iat": int(apns.clock())}, "s" * 32, "HS256", headers={"kid": KEY_ID}
    )
    response = await apns.push(authorization=f"bearer {token}")
    assert (response.status_code, reason(response)) == (403, "InvalidProviderToken")


async def test_expired_provider_token(apns: ApnsEnv) -> None:
    old = apns.make_jwt(iat=apns.clock() - 3601)
    response = await apns.push(authorization=f"bearer {old}")
    assert (response.status_code, reason(response)) == (403, "ExpiredProviderToken")
    # The same token ages out on a live connection too.
    token = apns.make_jwt()
    assert (await apns.push(authorization=f"bearer {token}")).status_code == 200
    apns.clock.advance(3601)
    response = await apns.push(authorization=f"bearer {token}")
    assert (response.status_code, reason(response)) == (403, "ExpiredProviderToken")


async def test_too_many_provider_token_updates(apns: ApnsEnv) -> None:
    first = apns.make_jwt()
    assert (await apns.push(authorization=f"bearer {first}")).status_code == 200
    apns.clock.advance(60)
    second = apns.make_jwt()
    response = await apns.push(authorization=f"bearer {second}")
    assert (response.status_code, reason(response)) == (429, "TooManyProviderTokenUpdates")
    # The first token keeps working on that connection.
    assert (await apns.push(authorization=f"bearer {first}")).status_code == 200
    # A new connection may use the new token straight away.
    async with apns.new_client() as other:
        response = await apns.push(client=other, authorization=f"bearer {second}")
        assert response.status_code == 200
    # After 20 minutes the refresh is accepted on the original connection.
    apns.clock.advance(1200)
    third = apns.make_jwt()
    assert (await apns.push(authorization=f"bearer {third}")).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "expected"),
    [
        ({"apns-topic": None}, 400, "MissingTopic"),
        ({"apns-topic": "bad topic!"}, 400, "BadTopic"),
        ({"apns-topic": "com.example.other"}, 400, "DeviceTokenNotForTopic"),
        ({"apns-push-type": "shout"}, 400, "InvalidPushType"),
        ({"apns-push-type": "voip"}, 400, "InvalidPushType"),  # voip without .voip topic
        ({"apns-topic": BUNDLE + ".voip"}, 400, "InvalidPushType"),  # alert on .voip topic
        ({"apns-priority": "7"}, 400, "BadPriority"),
        ({"apns-priority": "high"}, 400, "BadPriority"),
        ({"apns-expiration": "tomorrow"}, 400, "BadExpirationDate"),
        ({"apns-expiration": "-5"}, 400, "BadExpirationDate"),
        ({"apns-collapse-id": "c" * 65}, 400, "BadCollapseId"),
        ({"apns-id": "not-a-uuid"}, 400, "BadMessageId"),
    ],
)
async def test_header_validation(
    apns: ApnsEnv, headers: dict[str, str | None], status: int, expected: str
) -> None:
    response = await apns.push(**headers)
    assert (response.status_code, reason(response)) == (status, expected)
    assert uuid.UUID(response.headers["apns-id"])
    assert not apns.sim.delivered


async def test_collapse_id_limit_is_bytes(apns: ApnsEnv) -> None:
    assert (await apns.push(**{"apns-collapse-id": "c" * 64})).status_code == 200
    # httpx sends header values as ASCII/latin-1; 33 two-byte characters exceed 64 bytes.
    response = await apns.client.post(
        f"{apns.sim.url}/3/device/{TOKEN}",
        content=b"{}",
        headers=[
            *apns.headers().items(),
            ("apns-collapse-id", ("\u00e9" * 33).encode()),
        ],
    )
    assert reason(response) == "BadCollapseId"


async def test_topic_disallowed(apns: ApnsEnv, apns_key: tuple[bytes, bytes]) -> None:
    apns.sim.add_signing_key(TEAM_ID, KEY_ID, apns_key[1], topics=["com.example.other"])
    response = await apns.push()
    assert (response.status_code, reason(response)) == (400, "TopicDisallowed")


async def test_duplicate_headers(apns: ApnsEnv) -> None:
    headers = [*apns.headers().items(), ("apns-priority", "5")]
    response = await apns.client.post(
        f"{apns.sim.url}/3/device/{TOKEN}", content=b"{}", headers=headers
    )
    assert (response.status_code, reason(response)) == (400, "DuplicateHeaders")


async def test_payload_limits(apns: ApnsEnv) -> None:
    response = await apns.push(payload=b"")
    assert (response.status_code, reason(response)) == (400, "PayloadEmpty")
    response = await apns.push(payload=b"x" * 4097)
    assert (response.status_code, reason(response)) == (413, "PayloadTooLarge")
    assert (await apns.push(payload=b"x" * 4096)).status_code == 200
    response = await apns.push(
        payload=b"x" * 5121, **{"apns-topic": BUNDLE + ".voip", "apns-push-type": "voip"}
    )
    assert (response.status_code, reason(response)) == (413, "PayloadTooLarge")
    # Far beyond the server's body cap: still Apple's answer, and the connection survives.
    response = await apns.push(payload=b"x" * 200_000)
    assert (response.status_code, reason(response)) == (413, "PayloadTooLarge")
    assert (await apns.push()).status_code == 200
    assert len(apns.sim.delivered) == 2


async def test_many_concurrent_streams_one_connection(apns: ApnsEnv) -> None:
    payloads = [b'{"n":%d}' % i for i in range(150)]
    responses = await asyncio.gather(*(apns.push(payload=p) for p in payloads))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(d.payload for d in apns.sim.delivered) == sorted(payloads)
    assert apns.sim.server.connection_count == 1


async def test_status_faults(apns: ApnsEnv) -> None:
    apns.sim.inject(Fault(kind="status", status=503, reason="Shutdown"))
    apns.sim.inject(Fault(kind="status", status=429, retry_after=7, count=2))
    apns.sim.inject(Fault(kind="status", status=500))
    got = [await apns.push() for _ in range(5)]
    assert [(r.status_code, reason(r)) for r in got[:4]] == [
        (503, "Shutdown"),
        (429, "TooManyRequests"),
        (429, "TooManyRequests"),
        (500, "InternalServerError"),
    ]
    assert got[1].headers["retry-after"] == "7"
    assert got[4].status_code == 200
    assert len(apns.sim.delivered) == 1


async def test_latency_fault_does_not_block_other_streams(apns: ApnsEnv) -> None:
    apns.sim.inject(Fault(kind="latency", delay=0.5))
    loop = asyncio.get_running_loop()
    slow = asyncio.create_task(apns.push(payload=b'{"slow":1}'))
    await asyncio.sleep(0.05)
    start = loop.time()
    fast = await apns.push(payload=b'{"fast":1}')
    assert fast.status_code == 200
    assert loop.time() - start < 0.4
    assert (await slow).status_code == 200
    assert [d.payload for d in apns.sim.delivered] == [b'{"fast":1}', b'{"slow":1}']


async def test_reset_fault(apns: ApnsEnv) -> None:
    apns.sim.inject(Fault(kind="reset"))
    with pytest.raises(httpx.TransportError):
        await apns.push()
    assert not apns.sim.delivered
    # A new connection works again.
    assert (await apns.push()).status_code == 200
    assert len(apns.sim.delivered) == 1


async def test_goaway_fault_not_processed(apns: ApnsEnv) -> None:
    assert (await apns.push(payload=b'{"n":1}')).status_code == 200
    apns.sim.inject(Fault(kind="goaway"))
    # httpx learns from last_stream_id that the stream was not processed and retries it on
    # a fresh connection, so the push arrives exactly once.
    response = await apns.push(payload=b'{"n":2}')
    assert response.status_code == 200
    assert [d.payload for d in apns.sim.delivered] == [b'{"n":1}', b'{"n":2}']


async def test_goaway_fault_on_first_stream(apns: ApnsEnv) -> None:
    apns.sim.inject(Fault(kind="goaway"))
    with pytest.raises(httpx.TransportError):
        await apns.push()
    assert not apns.sim.delivered


async def test_goaway_with_streams_in_flight(apns: ApnsEnv) -> None:
    # Latency keeps stream A in flight while stream B is refused by GOAWAY: A is still
    # answered (drained) and B is not processed.
    apns.sim.inject(Fault(kind="latency", delay=0.3))
    apns.sim.inject(Fault(kind="goaway"))
    first = asyncio.create_task(apns.push(payload=b'{"a":1}'))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(apns.push(payload=b'{"b":1}'))
    assert (await first).status_code == 200
    result = await asyncio.gather(second, return_exceptions=True)
    assert apns.sim.delivered[0].payload == b'{"a":1}'
    if isinstance(result[0], httpx.Response):  # retried on a new connection
        assert [d.payload for d in apns.sim.delivered] == [b'{"a":1}', b'{"b":1}']
    else:
        assert len(apns.sim.delivered) == 1


async def test_sim_constructor_validation() -> None:
    with pytest.raises(ValueError):
        ApnsSimulator("staging")  # type: ignore[arg-type]
    sim = ApnsSimulator()
    with pytest.raises(ValueError):
        sim.register_device("xyz", BUNDLE)
    with pytest.raises(ValueError):
        sim.unregister_device("ab" * 32)
    with pytest.raises(ValueError):
        Fault(kind="status", count=0)
