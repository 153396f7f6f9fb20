"""The XEP-0114 connection to the chat server (slixmpp ``ComponentXMPP``).

It answers disco as ``pubsub/push`` with ``urn:xmpp:push:0``, hands publishes to
``ChatPushService`` and presence (received as an XEP-0356 privileged entity) to its
last-active-session tracker, and reconnects when the chat server goes away.
Replies are written raw (``ucpush.chat.protocol``) so errors carry the stream namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from ucpush.chat.protocol import (
    NS_PUBSUB,
    NS_PUSH,
    ErrorType,
    StanzaError,
    error_reply,
    parse_presence,
    parse_publish,
    result_reply,
)
from ucpush.chat.service import ChatPushService
from ucpush.logging import get_logger

_log = get_logger("ucpush.chat")


class XmppComponent(ComponentXMPP):  # type: ignore[misc]
    def __init__(
        self,
        service: ChatPushService,
        jid: str,
        secret: str,
        host: str,
        port: int,
        reconnect_delay: float,
    ) -> None:
        super().__init__(jid, secret, host, port)
        self.service = service
        self.reconnect_delay = reconnect_delay
        self.stopping = False
        self.connected_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.register_plugin("xep_0030")
        disco = self.plugin["xep_0030"]
        disco.add_identity(category="pubsub", itype="push", name="ucpush", jid=self.boundjid)
        disco.add_feature(NS_PUSH, jid=self.boundjid)
        ns = self.default_ns
        self.register_handler(
            Callback("push publish", MatchXPath(f"{{{ns}}}iq/{{{NS_PUBSUB}}}pubsub"), self._on_iq)
        )
        self.register_handler(
            Callback("privileged presence", MatchXPath(f"{{{ns}}}presence"), self._on_presence)
        )
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("disconnected", self._on_disconnected)

    def _on_session_start(self, _event: Any) -> None:
        _log.info("chat push component connected", jid=str(self.boundjid))
        self.connected_event.set()

    def _on_disconnected(self, reason: Any) -> None:
        self.connected_event.clear()
        # Presence is re-advertised by the server when the component authenticates again.
        self.service.sessions.forget()
        if self.stopping:
            return
        _log.warning("chat push component disconnected", reason=str(reason))
        self.loop.call_later(self.reconnect_delay, self._reconnect)

    def _reconnect(self) -> None:
        if not self.stopping:
            self.connect()

    def _on_presence(self, presence: Any) -> None:
        update = parse_presence(presence.xml)
        if update is not None:
            self.service.presence(update)

    def _on_iq(self, iq: Any) -> None:
        if iq["type"] != "set":
            if iq["type"] == "get":
                self._send_error(iq, StanzaError(ErrorType.CANCEL, "feature-not-implemented"))
            return
        task = self.loop.create_task(self._answer_publish(iq))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_publish(self, iq: Any) -> None:
        try:
            publish = parse_publish(iq.xml)
            await self.service.handle_publish(publish, str(iq["from"]))
        except StanzaError as error:
            _log.info(
                "chat publish refused",
                sender=str(iq["from"]),
                error=error.type.value,
                condition=error.condition,
                detail=error.text,
            )
            self._send_error(iq, error)
            return
        except Exception:
            # A store failure or a bug: the server must retry later, never drop the device.
            _log.exception("chat publish failed", sender=str(iq["from"]))
            self._send_error(iq, StanzaError(ErrorType.WAIT, "internal-server-error"))
            return
        self.send_raw(result_reply(iq["id"] or None, str(iq["to"]), str(iq["from"])))

    def _send_error(self, iq: Any, error: StanzaError) -> None:
        self.send_raw(error_reply(iq["id"] or None, str(iq["to"]), str(iq["from"]), error))

    async def drain(self) -> None:
        """Wait for the publishes being handled."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        self.stopping = True
        with contextlib.suppress(Exception):
            await self.disconnect(wait=1.0)
