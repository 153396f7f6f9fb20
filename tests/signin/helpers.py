"""Shared by the sign-in and local push tests: a movable clock and the client's HTTP calls."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx

from ucpush.signin.service import SigninService

PUSH_KEY = bytes(range(32))
PASSWORD = "correct horse battery staple"


class Clock:
    """Wall-clock time plus an offset tests move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


async def provision(
    service: SigninService,
    *,
    username: str = "alice",
    ssids: str = "Ward4;Ward5",
    refresh_login: bool = True,
) -> None:
    """A user with a profile whose UC service provisions ``ssids`` for local push."""
    await service.set_enterprise(oauth_refresh_login=refresh_login)
    if not await service.repo.list_profiles():
        await service.add_ucservice("lpns-wards", {"LocalPushSSIDList": ssids})
        await service.add_profile("nurses", ["lpns-wards"])
    await service.add_user(username, PASSWORD, display_name=username.title(), profile="nurses")


async def sign_in(
    client: httpx.AsyncClient, username: str = "alice", device_id: str = "iphone-1"
) -> dict[str, Any]:
    answer = await client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "username": username,
            "password": PASSWORD,
            "device_id": device_id,
        },
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def device_body(platform: str = "ios", **changes: Any) -> dict[str, Any]:
    body = {
        "platform": platform,
        "service": "APNS" if platform == "ios" else "FCM",
        "push_token": "ab" * 32,
        "push_key": base64.b64encode(PUSH_KEY).decode(),
        "push_key_id": "k1",
        "capabilities": {"callkit": True},
        "sip_instance_id": "<urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8>",
    }
    body.update(changes)
    return body


async def register(
    client: httpx.AsyncClient, token: str, device_id: str = "iphone-1", **changes: Any
) -> dict[str, Any]:
    answer = await client.put(
        f"/v1/devices/{device_id}",
        json=device_body(**changes),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()
