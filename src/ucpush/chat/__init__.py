"""Chat push (SPEC §4): an XEP-0357 app server for Prosody and ejabberd, run as an XEP-0114
component, that turns the chat server's publishes into message pushes through the relay.
See docs/chat.md.

The call node starts it with::

    async with run_chat_push(settings, store, relay=lambda: relay_client) as chat:
        ...  # chat.service.set_in_call(user_id, True) while a user is in a call
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ucpush.chat.registration import (
    PushRegistration,
    component_secret,
    node_key,
    registration_for,
)

if TYPE_CHECKING:
    from ucpush.chat.app import RunningChatPush, run_chat_push
    from ucpush.chat.service import ChatPushService, PushDone

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

_LAZY = {
    "run_chat_push": "ucpush.chat.app",
    "RunningChatPush": "ucpush.chat.app",
    "ChatPushService": "ucpush.chat.service",
    "PushDone": "ucpush.chat.service",
}


def __getattr__(name: str) -> Any:
    # The CLI imports this package; slixmpp and the relay client load only when serving.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
