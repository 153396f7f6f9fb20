"""The whole node with our own transport as the peers: TLS devices (trustme), the push hook,
unreachable contacts, and ``ucpush serve`` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import trustme

from tests.sip.sipp_harness import free_port, sip_user
from ucpush.config import SipSettings
from ucpush.sip.digest import SHA256, compute_ha1, compute_response
from ucpush.sip.helpers import build_cancel, make_response, new_branch, new_call_id, new_tag
from ucpush.sip.message import SipRequest, SipResponse
from ucpush.sip.proxy import CallControl, HeldCall
from ucpush.sip.registrar import BindingAdded, BindingEvent, BindingRemoved
from ucpush.sip.resolve import Flow, format_host
from ucpush.sip.server import SipNode
from ucpush.sip.transaction import TimerConfig
from ucpush.sip.transport import SipTransport
from ucpush.sip.uri import SipURI
from ucpush.store import Store
from ucpush.store.repository import Binding

pytestmark = pytest.mark.timeout(30)
DOMAIN = "example.org"


class Peer:
    """A minimal UA on our own transport: sends requests, collects what arrives."""

    def __init__(self, client_ssl: ssl.SSLContext | None = None) -> None:
        self.inbox: asyncio.Queue[tuple[SipRequest | SipResponse, Flow]] = asyncio.Queue()
        self.requests: list[tuple[SipRequest | SipResponse, Flow]] = []
        self.transport = SipTransport(
            lambda m, f: self.inbox.put_nowait((m, f)), client_ssl=client_ssl
        )

    async def next(self) -> tuple[SipRequest | SipResponse, Flow]:
        if self.requests:
            return self.requests.pop(0)
        return await asyncio.wait_for(self.inbox.get(), 5)

    async def response(self, *skip: int) -> SipResponse:
        """The next response not in ``skip``; requests arriving meanwhile are kept for
        ``next`` (a woken device gets its INVITE before its REGISTER's 2xx)."""
        while True:
            message, flow = await asyncio.wait_for(self.inbox.get(), 5)
            if isinstance(message, SipRequest):
                self.requests.append((message, flow))
            elif message.status not in skip:
                return message

    def request(
        self,
        method: str,
        uri: str,
        transport: str,
        *,
        user: str = "alice",
        to: str = "bob",
        headers: Sequence[tuple[str, str]] = (),
        call_id: str | None = None,
    ) -> SipRequest:
        host, port = self.transport.local[transport]
        items = [
            ("Via", f"SIP/2.0/{transport} {format_host(host)}:{port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{user}@{DOMAIN}>;tag={new_tag()}"),
            ("To", f"<sip:{to}@{DOMAIN}>"),
            ("Call-ID", call_id or new_call_id()),
            ("CSeq", f"1 {method}"),
            *headers,
        ]
        return SipRequest(method, uri, items)


def _node_flow(node: SipNode, transport: str) -> Flow:
    host, port = node.transport.local[transport]
    return Flow(transport, host, port)


async def start_node(
    store: Store,
    tmp_path: Path,
    ca: trustme.CA,
    timers: TimerConfig | None = None,
    **extra: object,
) -> SipNode:
    cert = ca.issue_cert("127.0.0.1", "sip.example.test")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    values: dict[str, object] = {
        "udp_port": 0,
        "tcp_port": 0,
        "tls_port": 0,
        "tls_cert": str(cert_file),
        "tls_key": str(key_file),
        "domains": [DOMAIN],
        "authenticate": False,
    }
    values.update(extra)
    settings = SipSettings.model_validate(values)
    node = SipNode(settings, store.sip, digest_secret=b"k" * 32, timers=timers or TimerConfig())
    await node.start()
    return node


async def register(peer: Peer, node: SipNode, transport: str, contact_params: str = "") -> None:
    host, port = peer.transport.local[transport]
    contact = f"<sip:bob@{format_host(host)}:{port};transport={transport.lower()}{contact_params}>"
    request = peer.request(
        "REGISTER",
        f"sip:{DOMAIN}",
        transport,
        user="bob",
        headers=[("Contact", contact), ("Expires", "600")],
    )
    peer.transport.send(request, _node_flow(node, transport), server_name="sip.example.test")
    assert (await peer.response()).status == 200


async def test_tls_device_gets_the_call_over_its_own_connection(store, tmp_path, ca):
    node = await start_node(store, tmp_path, ca)
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    device, caller = Peer(client_ssl), Peer()
    # The device accepts no connections (behind NAT): it only has the one it opened.
    await device.transport.listen_udp("127.0.0.1", 0)
    device.transport.local["TLS"] = ("127.0.0.1", 9)
    await caller.transport.listen_udp("127.0.0.1", 0)
    try:
        await register(device, node, "TLS")
        invite = caller.request("INVITE", f"sip:bob@{DOMAIN}", "UDP")
        caller.transport.send(invite, _node_flow(node, "UDP"))
        assert (await caller.response()).status == 100
        forwarded, flow = await device.next()
        assert isinstance(forwarded, SipRequest) and forwarded.method == "INVITE"
        assert flow == _node_flow(node, "TLS") and device.transport.connections == 1
        assert forwarded.top_via.transport == "TLS"
        # UDP in, TLS out: double Record-Route, each side reachable on its own transport;
        # the device's entry names its connection with a flow token (RFC 5626 §5.3).
        device_rr, caller_rr = forwarded.record_routes
        tls_port, udp_port = node.transport.local["TLS"][1], node.transport.local["UDP"][1]
        assert isinstance(device_rr.uri, SipURI) and device_rr.uri.user
        assert str(device_rr.uri).startswith("sips:")
        assert str(device_rr.uri).endswith(f"@127.0.0.1:{tls_port};lr")
        assert str(caller_rr.uri) == f"sip:127.0.0.1:{udp_port};transport=udp;lr"
        # Its answer names a contact nobody can connect to; only the token gets us back.
        contact = ("Contact", "<sip:elsewhere@127.0.0.1:9;transport=tls>")
        device.transport.send(make_response(forwarded, 200, to_tag="dev", headers=[contact]), flow)
        answer = await caller.response(100)
        assert answer.status == 200 and answer.to.tag == "dev"
        assert len(answer.vias) == 1
        routes = [("Route", str(r)) for r in reversed(answer.record_routes)]
        to = ("To", f"<sip:bob@{DOMAIN}>;tag=dev")
        for method in ("ACK", "BYE"):
            request = caller.request(
                method, "sip:elsewhere@127.0.0.1:9;transport=tls", "UDP",
                headers=routes, call_id=invite.call_id,
            )  # fmt: skip
            request.headers.set("To", to[1])
            request.headers.set("From", invite.headers.get("From") or "")
            request.headers.set("CSeq", f"{1 if method == 'ACK' else 2} {method}")
            caller.transport.send(request, _node_flow(node, "UDP"))
            arrived, arrived_flow = await device.next()
            assert isinstance(arrived, SipRequest) and arrived.method == method
            assert arrived_flow == flow and not arrived.headers.get("Route")
        device.transport.send(make_response(arrived, 200), arrived_flow)
        assert (await caller.response()).status == 200
    finally:
        for t in (device.transport, caller.transport):
            await t.close()
        await node.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_ipv6_call(store, tmp_path, ca):
    node = await start_node(store, tmp_path, ca, host="::1")
    device, caller = Peer(), Peer()
    await device.transport.listen_udp("::1", 0)
    await caller.transport.listen_stream("::1", 0)
    try:
        await register(device, node, "UDP")
        invite = caller.request("INVITE", f"sip:bob@{DOMAIN}", "TCP")
        caller.transport.send(invite, _node_flow(node, "TCP"))
        forwarded, flow = await device.next()
        assert isinstance(forwarded, SipRequest) and flow.host == "::1"
        assert forwarded.top_via.host == "[::1]"
        routes = [str(r.uri) for r in forwarded.record_routes]
        assert routes and all("[::1]:" in r for r in routes)
        device.transport.send(make_response(forwarded, 200, to_tag="v6"), flow)
        assert (await caller.response(100)).status == 200
    finally:
        for t in (device.transport, caller.transport):
            await t.close()
        await node.close()


class RecordingPush:
    """A ``PushHandler`` that records what the proxy tells it; with ``wake``, it holds the
    INVITE until the AOR registers again and forwards it there (what call push does after
    the push went out), else it gives up at once (480)."""

    def __init__(self, *, wake: bool = False) -> None:
        self.wake = wake
        self.calls: list[tuple[str, list[tuple[Binding, bool]]]] = []
        self.events: list[BindingEvent] = []
        self.told: list[tuple[str, object]] = []
        self._held: dict[str, CallControl] = {}
        self.held = asyncio.Event()

    async def prepare_call(
        self, request: SipRequest, aor: str, bindings: Sequence[tuple[Binding, bool]]
    ) -> HeldCall:
        self.calls.append((aor, list(bindings)))
        return RecordingCall(self, aor)

    def on_binding_event(self, event: BindingEvent) -> None:
        self.events.append(event)
        control = self._held.pop(event.binding.aor, None)
        if control is not None and not isinstance(event, BindingRemoved):
            control.forward(event.binding)


class RecordingCall:
    def __init__(self, push: RecordingPush, aor: str) -> None:
        self.push, self.aor = push, aor

    def start(self, control: CallControl, live_branches: bool) -> None:
        self.push.told.append(("start", live_branches))
        if not self.push.wake:
            control.respond(480, "Temporarily Unavailable")
            return
        self.push._held[self.aor] = control
        self.push.held.set()

    def ringing(self, binding_id: str | None) -> None:
        self.push.told.append(("ringing", binding_id))

    def branch_failed(self, binding_id: str, status: int) -> None:
        self.push.told.append(("branch_failed", status))

    def final(self, status: int, binding_id: str | None) -> None:
        self.push.told.append(("final", status))

    def cancelled(self, reason: str | None) -> None:
        self.push.told.append(("cancelled", reason))


async def test_push_only_bindings_go_to_the_push_handler(store, tmp_path, ca):
    node = await start_node(store, tmp_path, ca)
    node.push = push = RecordingPush()
    device, caller = Peer(), Peer()
    await device.transport.listen_stream("127.0.0.1", 0)
    await caller.transport.listen_udp("127.0.0.1", 0)
    try:
        pn = ";pn-provider=fcm;pn-prid=tok1;pn-param=proj1"
        await register(device, node, "TCP", pn)
        await device.transport.close()  # the app went to the background: connection gone
        await asyncio.sleep(0.05)
        invite = caller.request("INVITE", f"sip:bob@{DOMAIN}", "UDP")
        caller.transport.send(invite, _node_flow(node, "UDP"))
        assert (await caller.response(100)).status == 480
        ((aor, bindings),) = push.calls
        assert aor == f"sip:bob@{DOMAIN}"
        assert [(b.pn_provider, b.pn_prid, live) for b, live in bindings] == [
            ("fcm", "tok1", False)
        ]
        assert push.told == [("start", False), ("final", 480)]
    finally:
        await caller.transport.close()
        await node.close()


async def test_push_handler_holds_the_call_until_the_device_registers_again(store, tmp_path, ca):
    node = await start_node(store, tmp_path, ca)
    node.push = push = RecordingPush(wake=True)
    device, caller = Peer(), Peer()
    await device.transport.listen_stream("127.0.0.1", 0)
    await caller.transport.listen_udp("127.0.0.1", 0)
    pn = ";pn-provider=fcm;pn-prid=tok1;pn-param=proj1"
    try:
        await register(device, node, "TCP", pn)
        assert [type(e) for e in push.events] == [BindingAdded]
        await device.transport.close()  # backgrounded
        await asyncio.sleep(0.05)
        invite = caller.request("INVITE", f"sip:bob@{DOMAIN}", "UDP")
        caller.transport.send(invite, _node_flow(node, "UDP"))
        assert (await caller.response()).status == 100
        await asyncio.wait_for(push.held.wait(), 5)
        # The push woke the app: it connects again and re-registers.
        device = Peer()
        await device.transport.listen_stream("127.0.0.1", 0)
        await register(device, node, "TCP", pn)
        forwarded, flow = await device.next()
        assert isinstance(forwarded, SipRequest) and forwarded.method == "INVITE"
        device.transport.send(make_response(forwarded, 180, to_tag="woken"), flow)
        assert (await caller.response()).status == 180
        device.transport.send(make_response(forwarded, 200, to_tag="woken"), flow)
        assert (await caller.response()).status == 200
        assert push.told == [
            ("start", False),
            ("ringing", push.events[-1].binding.id),
            ("final", 200),
        ]
    finally:
        for t in (device.transport, caller.transport):
            await t.close()
        await node.close()


async def test_bindings_all_unreachable_is_480(store, tmp_path, ca):
    node = await start_node(store, tmp_path, ca)
    device, caller = Peer(), Peer()
    await device.transport.listen_stream("127.0.0.1", 0)
    await caller.transport.listen_udp("127.0.0.1", 0)
    try:
        await register(device, node, "TCP")
        await device.transport.close()  # nobody listens on the contact any more
        await asyncio.sleep(0.05)  # the node notices its flow closed
        invite = caller.request("MESSAGE", f"sip:bob@{DOMAIN}", "UDP")
        caller.transport.send(invite, _node_flow(node, "UDP"))
        assert (await caller.response()).status == 480
    finally:
        await caller.transport.close()
        await node.close()


async def test_options_to_the_node_itself(store, tmp_path, ca):
    node = await start_node(store, tmp_path, ca)
    peer = Peer()
    await peer.transport.listen_udp("127.0.0.1", 0)
    try:
        host, port = node.transport.local["UDP"]
        for method, status in (("OPTIONS", 200), ("MESSAGE", 405)):
            request = peer.request(method, f"sip:{host}:{port}", "UDP")
            peer.transport.send(request, _node_flow(node, "UDP"))
            response = await peer.response()
            assert response.status == status and response.headers.get("Allow")
    finally:
        await peer.transport.close()
        await node.close()


async def test_trying_leaves_before_an_immediate_final(store, tmp_path, ca):
    node = await start_node(store, tmp_path, ca)
    peer = Peer()
    await peer.transport.listen_udp("127.0.0.1", 0)
    try:
        invite = peer.request("INVITE", f"sip:bob@{DOMAIN}", "UDP")
        invite.headers.set("Max-Forwards", "0")
        peer.transport.send(invite, _node_flow(node, "UDP"))
        assert [(await peer.response()).status for _ in range(2)] == [100, 483]
    finally:
        await peer.transport.close()
        await node.close()


async def test_branch_ignoring_cancel_is_given_up_after_64_t1(store, tmp_path, ca):
    node = await start_node(store, tmp_path, ca, TimerConfig(t1=0.02))
    device, caller = Peer(), Peer()
    await device.transport.listen_udp("127.0.0.1", 0)
    await caller.transport.listen_udp("127.0.0.1", 0)
    try:
        await register(device, node, "UDP")
        invite = caller.request("INVITE", f"sip:bob@{DOMAIN}", "UDP")
        caller.transport.send(invite, _node_flow(node, "UDP"))
        forwarded, flow = await device.next()
        assert isinstance(forwarded, SipRequest)
        device.transport.send(make_response(forwarded, 180, to_tag="dev"), flow)
        assert (await caller.response(100)).status == 180
        cancel = build_cancel(invite)
        caller.transport.send(cancel, _node_flow(node, "UDP"))
        statuses = {(await caller.response()).status for _ in range(2)}
        assert statuses == {200, 487}
        cancelled, _ = await device.next()  # and never answered
        assert isinstance(cancelled, SipRequest) and cancelled.method == "CANCEL"
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not node.driver.layer.clients and not node._contexts:
                break
        assert not node.driver.layer.clients and not node._contexts and not node._branches
    finally:
        for t in (device.transport, caller.transport):
            await t.close()
        await node.close()


async def test_gateway_keeps_bindings_as_the_pbx_grants_them_and_pushes(store, tmp_path, ca):
    pbx, device = Peer(), Peer()
    await pbx.transport.listen_udp("127.0.0.1", 0)
    await device.transport.listen_stream("127.0.0.1", 0)
    upstream = f"sip:127.0.0.1:{pbx.transport.local['UDP'][1]}"
    node = await start_node(store, tmp_path, ca, mode="gateway", upstream=upstream)
    node.push = push = RecordingPush()
    aor = f"sip:bob@{DOMAIN}"

    async def register_via_gateway(expires: int) -> SipRequest:
        host, port = device.transport.local["TCP"]
        pn = ";pn-provider=apns;pn-prid=tok;pn-param=TEAM.org.example.voip"
        contact = f"<sip:bob@{host}:{port};transport=tcp{pn}>"
        request = device.request(
            "REGISTER",
            f"sip:{DOMAIN}",
            "TCP",
            user="bob",
            headers=[("Contact", contact), ("Expires", str(expires))],
        )
        device.transport.send(request, _node_flow(node, "TCP"))
        relayed, pbx_flow = await pbx.next()
        assert isinstance(relayed, SipRequest) and relayed.method == "REGISTER"
        # The PBX answers 600 s whatever was asked, and lists no Contact.
        pbx.transport.send(make_response(relayed, 200, headers=[("Expires", "600")]), pbx_flow)
        assert (await device.response()).status == 200
        return relayed

    try:
        relayed = await register_via_gateway(300)
        assert relayed.headers.get("Feature-Caps") == '*;+sip.pns="apns"'
        (path,) = relayed.headers.get_all("Path")
        (binding,) = await _bindings(store, aor, 1)
        assert binding.pn_prid == "tok"
        assert (binding.expires_at - binding.updated_at).total_seconds() == 600
        # The device went to the background; the PBX calls it through our Path.
        await device.transport.close()
        await asyncio.sleep(0.05)
        invite = pbx.request("INVITE", binding.contact, "UDP", headers=[("Route", path)])
        pbx.transport.send(invite, _node_flow(node, "UDP"))
        assert (await pbx.response(100)).status == 480
        ((pushed_aor, pushed),) = push.calls
        assert pushed_aor == aor and [(b.id, live) for b, live in pushed] == [(binding.id, False)]
    finally:
        await pbx.transport.close()
        await node.close()


async def test_gateway_unregister_removes_the_binding(store, tmp_path, ca):
    pbx, device = Peer(), Peer()
    await pbx.transport.listen_udp("127.0.0.1", 0)
    await device.transport.listen_udp("127.0.0.1", 0)
    upstream = f"sip:127.0.0.1:{pbx.transport.local['UDP'][1]}"
    node = await start_node(store, tmp_path, ca, mode="gateway", upstream=upstream)
    host, port = device.transport.local["UDP"]
    try:
        for cseq, (expires, count) in enumerate(((300, 1), (0, 0)), start=1):
            request = device.request(
                "REGISTER",
                f"sip:{DOMAIN}",
                "UDP",
                user="bob",
                headers=[("Contact", f"<sip:bob@{host}:{port}>"), ("Expires", str(expires))],
                call_id="reg-1",
            )
            request.headers.set("CSeq", f"{cseq} REGISTER")
            device.transport.send(request, _node_flow(node, "UDP"))
            relayed, pbx_flow = await pbx.next()
            assert isinstance(relayed, SipRequest)
            answer = make_response(relayed, 200, headers=[("Expires", "600")])
            pbx.transport.send(answer, pbx_flow)
            assert (await device.response()).status == 200
            assert len(await _bindings(store, f"sip:bob@{DOMAIN}", count)) == count
    finally:
        for t in (device.transport, pbx.transport):
            await t.close()
        await node.close()


async def _bindings(store: Store, aor: str, count: int) -> list[Binding]:
    """The AOR's bindings once there are ``count`` (the gateway stores them after the 2xx)."""
    for _ in range(100):
        bindings = await store.sip.list_bindings(aor)
        if len(bindings) == count:
            return bindings
        await asyncio.sleep(0.02)
    raise AssertionError(f"{aor}: {len(bindings)} bindings, expected {count}")


async def test_ucpush_serve_runs_and_stops(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "UCPUSH_CONFIG": str(tmp_path / "ucpush.toml"),
        "UCPUSH_DATA_DIR": str(tmp_path / "var"),
        "UCPUSH_LOG__FORMAT": "console",
    }
    (tmp_path / "ucpush.toml").write_text(
        f'[sip]\ndomains = ["{DOMAIN}"]\nudp_port = {port}\ntcp_port = {port}\n'
        'transports = ["udp", "tcp"]\n'
        # The node's HTTP API and local push listen too: any free port.
        "[signin]\nport = 0\n[lpns]\nport = 0\n[admin]\nport = 0\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ucpush",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        request = (
            f"OPTIONS sip:nobody@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{sock.getsockname()[1]};branch=z9hG4bKserve;rport\r\n"
            f"From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:nobody@{DOMAIN}>\r\n"
            "Call-ID: serve-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        answer = b""
        for _ in range(50):  # until the node listens
            sock.sendto(request, ("127.0.0.1", port))
            try:
                answer = await asyncio.wait_for(loop.sock_recv(sock, 65535), 0.2)
                break
            except TimeoutError:
                continue
        assert answer.startswith(b"SIP/2.0 404 ")
        assert (tmp_path / "var" / "sip-digest.key").stat().st_mode & 0o777 == 0o600
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 10)
        assert process.stderr is not None
        assert code == 0, (await process.stderr.read()).decode(errors="replace")[-3000:]
    finally:
        sock.close()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_outbound_proxy_use_needs_proxy_authentication(store, tmp_path, ca):
    """Out-of-dialog requests routed elsewhere are relayed for our users only: 407, then the
    digest answer; our credentials do not travel on."""
    await store.sip.add_user(sip_user("alice", "pw"))
    node = await start_node(store, tmp_path, ca, authenticate=True, realm=DOMAIN)
    caller, far = Peer(), Peer()
    await caller.transport.listen_udp("127.0.0.1", 0)
    await far.transport.listen_udp("127.0.0.1", 0)
    far_host, far_port = far.transport.local["UDP"]
    route = f"<sip:{far_host}:{far_port};transport=udp;lr>"

    def invite(authorization: str | None = None) -> SipRequest:
        headers = [("Route", route)]
        if authorization is not None:
            headers.append(("Proxy-Authorization", authorization))
        return caller.request("INVITE", "sip:dave@elsewhere.example", "UDP", headers=headers)

    def answer(challenge: SipResponse, password: str) -> str:
        params = dict(
            p.strip().split("=", 1)
            for p in challenge.headers.get("Proxy-Authenticate")[7:].split(",")
        )
        nonce = params["nonce"].strip('"')
        response = compute_response(
            compute_ha1("alice", DOMAIN, password, SHA256),
            SHA256,
            method="INVITE",
            uri="sip:dave@elsewhere.example",
            nonce=nonce,
            qop="auth",
            nc="00000001",
            cnonce="c0ffee",
        )
        return (
            f'Digest username="alice", realm="{DOMAIN}", nonce="{nonce}", '
            f'uri="sip:dave@elsewhere.example", response="{response}", algorithm=SHA-256, '
            'qop=auth, nc=00000001, cnonce="c0ffee"'
        )

    try:
        caller.transport.send(invite(), _node_flow(node, "UDP"))
        challenge = await caller.response(100)
        assert challenge.status == 407 and challenge.headers.get("Proxy-Authenticate")
        caller.transport.send(invite(answer(challenge, "wrong")), _node_flow(node, "UDP"))
        assert (await caller.response(100)).status == 407
        caller.transport.send(invite(answer(challenge, "pw")), _node_flow(node, "UDP"))
        forwarded, flow = await far.next()
        assert isinstance(forwarded, SipRequest) and forwarded.method == "INVITE"
        assert forwarded.headers.get("Proxy-Authorization") is None
        far.transport.send(make_response(forwarded, 486, to_tag="far"), flow)
        assert (await caller.response(100)).status == 486
    finally:
        for peer in (caller, far):
            await peer.transport.close()
        await node.close()


async def test_calls_through_the_node_are_reported_until_their_bye(store, tmp_path, ca):
    node = await start_node(store, tmp_path, ca)
    seen: list[tuple[str, bool]] = []
    node.on_call = lambda user, in_call: seen.append((user, in_call))
    device, caller = Peer(), Peer()
    await device.transport.listen_stream("127.0.0.1", 0)
    await caller.transport.listen_udp("127.0.0.1", 0)
    try:
        await register(device, node, "TCP")
        invite = caller.request("INVITE", f"sip:bob@{DOMAIN}", "UDP", call_id="call-in-progress")
        caller.transport.send(invite, _node_flow(node, "UDP"))
        forwarded, flow = await device.next()
        assert isinstance(forwarded, SipRequest)
        device.transport.send(make_response(forwarded, 180, to_tag="dev"), flow)
        assert (await caller.response(100)).status == 180
        assert seen == []  # ringing is not a call yet
        device.transport.send(make_response(forwarded, 200, to_tag="dev"), flow)
        answer = await caller.response(100, 180)
        assert answer.status == 200
        assert seen == [(f"alice@{DOMAIN}", True), (f"bob@{DOMAIN}", True)]
        bye = caller.request("BYE", f"sip:bob@{DOMAIN}", "UDP", call_id="call-in-progress")
        bye.headers.set("To", f"<sip:bob@{DOMAIN}>;tag=dev")
        caller.transport.send(bye, _node_flow(node, "UDP"))
        for _ in range(100):
            if len(seen) == 4:
                break
            await asyncio.sleep(0.01)
        assert seen[2:] == [(f"alice@{DOMAIN}", False), (f"bob@{DOMAIN}", False)]
    finally:
        for peer in (device, caller):
            await peer.transport.close()
        await node.close()
