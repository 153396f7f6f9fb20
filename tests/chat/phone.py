"""A chat client played by slixmpp: the phone (push enabled, stream management, suspended by
dropping its socket, resumed later) or the desktop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from slixmpp import ClientXMPP
from slixmpp.stanza import Iq
from slixmpp.xmlstream import ET

from tests.chat.servers import PASSWORD, ChatServer

NS_PUSH = "urn:xmpp:push:0"
NS_DATA = "jabber:x:data"
NS_IDLE = "urn:xmpp:idle:1"


class Client(ClientXMPP):  # type: ignore[misc]
    def __init__(self, server: ChatServer, user: str, resource: str) -> None:
        super().__init__(server.jid(user, resource), PASSWORD)
        self.chat_server = server
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0198")
        self.register_plugin("xep_0280")  # carbons
        self.register_plugin("xep_0045")
        self.register_plugin("xep_0249")  # direct MUC invitations
        self.plugin["xep_0198"].window = 1  # ack often: the server's queue stays small
        self.plugin["feature_mechanisms"].unencrypted_plain = True
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self.received: list[Any] = []  # every message, presence and invitation, in order
        self.arrived = asyncio.Event()
        self.online = asyncio.Event()
        self.resumed = asyncio.Event()
        self.add_event_handler("session_start", self._session_start)
        self.add_event_handler("session_resumed", lambda _e: self.resumed.set())
        self.add_event_handler("message", self._record)
        self.add_event_handler("presence", self._record)
        self.add_event_handler("groupchat_direct_invite", self._record)

    async def _session_start(self, _event: Any) -> None:
        self.send_presence()
        await self.get_roster()
        self.online.set()

    def _record(self, stanza: Any) -> None:
        if (
            stanza.name == "message"
            and not stanza["body"]
            and not stanza.xml.findall("{jabber:x:conference}x")
        ):
            return
        self.received.append(stanza)
        self.arrived.set()

    async def start(self) -> Client:
        self.connect("127.0.0.1", self.chat_server.c2s_port)
        await asyncio.wait_for(self.online.wait(), 15)
        return self

    def bodies(self) -> list[str]:
        return [s["body"] for s in self.received if s.name == "message" and s["body"]]

    async def wait_for(self, count: int, seconds: float = 10.0) -> None:
        """Until ``count`` stanzas were received in all."""
        try:
            async with asyncio.timeout(seconds):
                while len(self.received) < count:
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            got = [str(s) for s in self.received]
            raise AssertionError(f"expected {count} stanzas, got {len(got)}: {got}") from None

    async def enable_push(self, component: str, node: str, secret: str | None) -> None:
        iq = self.Iq(stype="set")
        enable = ET.Element(f"{{{NS_PUSH}}}enable", jid=component, node=node)
        if secret is not None:
            enable.append(_form("http://jabber.org/protocol/pubsub#publish-options", secret))
        iq.append(enable)
        await iq.send(timeout=10)

    async def disable_push(self, component: str, node: str) -> None:
        iq = self.Iq(stype="set")
        iq.append(ET.Element(f"{{{NS_PUSH}}}disable", jid=component, node=node))
        await iq.send(timeout=10)

    def idle(self, seconds_ago: float) -> None:
        """Away presence with an XEP-0319 idle time: the user left this device."""
        presence = self.make_presence(pshow="away")
        since = datetime.now(UTC) - timedelta(seconds=seconds_ago)
        idle = ET.Element(f"{{{NS_IDLE}}}idle", since=since.isoformat().replace("+00:00", "Z"))
        presence.append(idle)
        presence.send()

    def active(self) -> None:
        """The user interacts with this device (available presence, no idle)."""
        self.send_presence()

    async def suspend(self) -> None:
        """The app goes to the background: the socket drops, no ``</stream>`` (XEP-0198
        hibernation on the server)."""
        # Acknowledge all received so the server's queue holds only what comes next.
        self.plugin["xep_0198"].send_ack()
        await asyncio.sleep(0.2)
        self.received.clear()
        self._reconnect_on_loss = False
        self.online.clear()
        self.resumed.clear()
        assert self.transport is not None
        self.transport.abort()
        await asyncio.sleep(0.3)

    async def resume(self) -> None:
        self.connect("127.0.0.1", self.chat_server.c2s_port)
        await asyncio.wait_for(self.resumed.wait(), 15)

    async def sign_out(self) -> None:
        """What a client does on sign-out: unavailable presence, then ``</stream>``."""
        self.send_presence(ptype="unavailable")
        await asyncio.sleep(0.1)
        await self.close()

    async def close(self) -> None:
        await self.disconnect(wait=1.0)


def _invitation(stanza: Any) -> bool:
    return stanza.xml.find("{jabber:x:conference}x") is not None


def _form(form_type: str, secret: str) -> Any:
    x = ET.Element(f"{{{NS_DATA}}}x", type="submit")
    for var, value in (("FORM_TYPE", form_type), ("secret", secret)):
        field = ET.SubElement(x, f"{{{NS_DATA}}}field", var=var)
        ET.SubElement(field, f"{{{NS_DATA}}}value").text = value
    return x


__all__ = ["Client", "Iq"]
