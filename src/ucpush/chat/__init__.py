"""Chat push (SPEC §4): an XEP-0357 app server for Prosody and ejabberd, run as an XEP-0114
component, that turns the chat server's publishes into message pushes through the relay.
See docs/chat.md.

The call node starts it with::

    async with run_chat_push(settings, store, relay=lambda: relay_client) as chat:
        ...  # chat.service.set_in_call(user_id, True) while a user is in a call
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from ucpush.chat.component import XmppComponent
from ucpush.chat.registration import PushRegistration, registration_for
from ucpush.chat.service import ChatDirectory, ChatPushService, PushDone
from ucpush.config import ChatSettings, Settings
from ucpush.crypto.secretfile import load_or_create_secret, write_secret
from ucpush.logging import get_logger
from ucpush.relay.client import RelayClient
from ucpush.store import Store

__all__ = [
    "ChatPushService",
    "PushDone",
    "PushRegistration",
    "RunningChatPush",
    "component_secret",
    "node_key",
    "registration_for",
    "run_chat_push",
]

_log = get_logger("ucpush.chat")


def node_key(settings: Settings) -> bytes:
    """The key node secrets derive from (``chat.secret_file``, made on first use)."""
    chat = settings.chat
    return load_or_create_secret(
        Path(chat.secret_file) if chat.secret_file else settings.data_dir / "chat-secret"
    )


def component_secret(settings: Settings) -> str:
    """The XEP-0114 password shared with the chat server (made on first use)."""
    chat = settings.chat
    path = (
        Path(chat.component_secret_file)
        if chat.component_secret_file
        else settings.data_dir / "chat-component-secret"
    )
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        import secrets

        secret = secrets.token_urlsafe(24)
        write_secret(path, secret.encode())
    if not secret:
        raise ValueError(f"{path.name}: component secret is empty")
    return secret


@dataclass
class RunningChatPush:
    service: ChatPushService
    component: XmppComponent

    def set_in_call(self, user: str, in_call: bool) -> None:
        self.service.set_in_call(user, in_call)


@contextlib.asynccontextmanager
async def run_chat_push(
    settings: Settings,
    store: Store | None,
    relay: Callable[[], RelayClient | None],
    *,
    directory: ChatDirectory | None = None,
    connect_timeout: float = 10.0,
    on_push_done: Callable[[PushDone], None] | None = None,
) -> AsyncIterator[RunningChatPush]:
    """Connect the component to the chat server and serve until the block exits; then send
    the 'terminated' push to every push-enabled session and disconnect (a crash sends none).

    ``relay`` is asked for the relay client at each push (None = not onboarded: publishes
    get ``wait``). Devices come from ``store.signin`` unless ``directory`` is given.
    """
    chat: ChatSettings = settings.chat
    if directory is None:
        if store is None:
            raise ValueError("run_chat_push needs a store or a directory")
        directory = store.signin
    service = ChatPushService(chat, directory, relay, node_key(settings), on_push_done=on_push_done)
    component = XmppComponent(
        service,
        chat.component_jid,
        component_secret(settings),
        chat.server_host,
        chat.server_port,
        chat.reconnect_delay,
    )
    component.connect()
    try:
        await asyncio.wait_for(component.connected_event.wait(), connect_timeout)
    except TimeoutError:
        await component.close()
        raise ConnectionError(
            f"chat push: no XEP-0114 session with {chat.server_host}:{chat.server_port} as "
            f"{chat.component_jid} within {connect_timeout:g} s (check component_secret)"
        ) from None
    rolling = asyncio.create_task(_roll_windows(service))
    try:
        yield RunningChatPush(service, component)
        await component.drain()
        await service.send_terminated()
    finally:
        rolling.cancel()
        await component.close()


async def _roll_windows(service: ChatPushService) -> None:
    # The 60 s windows close even when no push happens.
    while True:
        await asyncio.sleep(5.0)
        service.counters.roll()
