"""Starting and stopping chat push: ``run_chat_push`` (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ucpush.chat.component import XmppComponent
from ucpush.chat.registration import component_secret, node_key
from ucpush.chat.service import ChatDirectory, ChatPushService, PushDone
from ucpush.config import ChatSettings, Settings
from ucpush.relay.client import RelayClient
from ucpush.store import Store


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
    wait_connected: bool = True,
    on_push_done: Callable[[PushDone], None] | None = None,
) -> AsyncIterator[RunningChatPush]:
    """Connect the component to the chat server and serve until the block exits; then send
    the 'terminated' push to every push-enabled session and disconnect (a crash sends none).

    ``relay`` is asked for the relay client at each push (None = not onboarded: publishes
    get ``wait``). Devices come from ``store.signin`` unless ``directory`` is given. With
    ``wait_connected`` (default) a chat server that does not accept the component within
    ``connect_timeout`` raises ``ConnectionError``; without, the block starts at once and
    the component keeps trying every ``reconnect_delay`` seconds.
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
        if wait_connected:
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
