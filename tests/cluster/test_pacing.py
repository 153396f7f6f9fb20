"""Re-login pacing: the sans-IO pacer on a fake clock, then the middleware in a real server
with a sign-in storm whose clients follow Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request

from ucpush import aio
from ucpush.cluster.pacing import Pacer, SignInPacing, client_key


def test_slots_are_one_interval_apart_and_far_ones_are_reserved() -> None:
    pacer = Pacer(4.0, hold_max=1.0)
    decisions = [pacer.decide(f"user:u{i}", 100.0) for i in range(7)]
    # 0, .25, .5, .75, 1.0 s: held; 1.25 and 1.5 s: come back later.
    assert decisions[:5] == [(True, 0.0), (True, 0.25), (True, 0.5), (True, 0.75), (True, 1.0)]
    assert [d[0] for d in decisions[5:]] == [False, False]
    assert pacer.retry_after(decisions[6][1]) == 1
    # u6 comes back: it gets its own slot (1.5 s after the start), not a new one at the end.
    assert pacer.decide("user:u6", 100.6) == (True, pytest.approx(0.9))
    assert "user:u6" not in pacer.reserved
    assert pacer.decide("user:new", 100.6) == (False, pytest.approx(1.15))  # after u6


def test_an_early_client_keeps_its_reservation() -> None:
    pacer = Pacer(1.0, hold_max=0.5)
    for i in range(5):
        pacer.decide(f"k{i}", 0.0)
    admitted, wait = pacer.decide("k4", 1.0)  # slot 4.0: still too early
    assert (admitted, wait) == (False, 3.0)
    assert pacer.decide("k4", 3.8) == (True, pytest.approx(0.2))


def test_unclaimed_reservations_expire() -> None:
    pacer = Pacer(1.0, hold_max=0.0, grace=5.0)
    pacer.decide("a", 0.0)
    pacer.decide("b", 0.0)  # slot 1.0, reserved
    assert pacer.reserved == {"b": 1.0}
    pacer.decide("c", 7.0)  # b never came back
    assert "b" not in pacer.reserved


def test_bad_settings_refused() -> None:
    for rate, hold in ((0.0, 1.0), (1.0, -1.0)):
        with pytest.raises(ValueError):
            Pacer(rate, hold_max=hold)


def test_client_key() -> None:
    form = b"grant_type=password&username=alice&password=x&device_id=ph1"
    assert client_key(form, "addr:1") == "user:alice/ph1"
    assert client_key(b"grant_type=refresh_token&refresh_token=r1", "a").startswith("refresh:")
    assert client_key(b"\xff\xfe", "addr:1") == "addr:1"
    assert client_key(b"grant_type=password", "addr:1") == "addr:1"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[float]]]:
    served: list[float] = []
    app = FastAPI()

    @app.post("/oauth/token")
    async def token(request: Request) -> dict[str, str]:
        served.append(time.monotonic())
        form = (await request.body()).decode()
        return {"form": form}

    @app.get("/v1/config")
    async def config() -> dict[str, str]:
        return {}

    app.add_middleware(SignInPacing, rate=8.0, hold_max=0.5)
    async with aio.serve_http(app, host="127.0.0.1", port=0) as http:
        yield f"http://127.0.0.1:{aio.bound_port(http)}", served


async def test_storm_is_paced_and_nobody_is_dropped(server: tuple[str, list[float]]) -> None:
    url, served = server
    retries = 0

    async def sign_in(client: httpx.AsyncClient, user: str) -> str:
        nonlocal retries
        while True:
            answer = await client.post(
                "/oauth/token", content=f"grant_type=password&username={user}&password=pw"
            )
            if answer.status_code != 503:
                assert answer.status_code == 200
                return str(answer.json()["form"])
            assert answer.json()["error"] == "temporarily_unavailable"
            retries += 1
            await asyncio.sleep(int(answer.headers["retry-after"]))

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        # Other requests are never paced.
        assert (await client.get("/v1/config")).status_code == 200
        forms = await asyncio.gather(*(sign_in(client, f"u{i}") for i in range(24)))
    assert forms == [f"grant_type=password&username=u{i}&password=pw" for i in range(24)]
    assert retries > 0  # some had to come back later
    achieved = (len(served) - 1) / (served[-1] - served[0])
    assert 8.0 * 0.7 <= achieved <= 8.0 * 1.1
