"""Call wake-up latency through the whole stack, at a steady rate of wake-ups.

    .venv/bin/python bench/call_wakeup.py [--rate 50] [--seconds 10]

Not run by the test suite; writes bench/results/call_wakeup.{md,json}. Every component is its
own process (tests/support/callstack.py): ``ucpush sim serve``, ``ucpush relay serve`` and
``ucpush serve`` (SIP digest off, so a REGISTER is one round trip; everything else as
shipped: SQLite store, call push with default timers). The load comes from this process over
loopback with the project's SIP transport as the user agents:

* Set-up: ``rate x seconds`` sign-in devices with push keys (one user) per phase, each
  registered over TCP with RFC 8599 pn-* parameters, then disconnected (the app is in the
  background).
* Wake-ups, open loop at ``--rate``/s for ``--seconds``: a caller sends an INVITE to a
  background device (t0); 200 ms later that device registers again over a new TCP connection
  (t1, as a woken app does) and answers the forwarded INVITE (t2) with 486, which the caller
  acknowledges. **INVITE -> push at APNs** = the simulator's receive time of the push minus t0
  (node + relay + simulator, a superset of the node's "push sent"); **push sent** = the node's
  own ``ucpush_call_push_sent_seconds`` histogram on /metrics (INVITE handed to call push ->
  push leaving for the relay; bucket-interpolated); **re-REGISTER -> INVITE forwarded** =
  t2 - t1 (node only, plus loopback).
* Baselines in the same run, same rate: **relay direct** = a relay client in this process
  pushing straight to the relay (send -> simulator receive time): what the relay and simulator
  add, so INVITE -> push minus it is what the node adds; **live INVITE -> forwarded** = INVITEs
  to devices with a live connection and no push binding: the plain proxy hop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from tests.support.callstack import (  # noqa: E402
    BUNDLE,
    TEAM_ID,
    CallStack,
    call_stack,
    new_voucher,
)

from ucpush.config import load_settings  # noqa: E402
from ucpush.crypto import jwe  # noqa: E402
from ucpush.relay.client import RelayClient  # noqa: E402
from ucpush.relay.providers.base import PushType  # noqa: E402
from ucpush.sip.helpers import build_ack, make_response, new_branch, new_call_id, new_tag  # noqa: E402
from ucpush.sip.message import SipRequest, SipResponse  # noqa: E402
from ucpush.sip.resolve import Flow  # noqa: E402
from ucpush.sip.transport import SipTransport  # noqa: E402
from ucpush.store import open_store  # noqa: E402
from ucpush.store.repository import Device, Platform  # noqa: E402

DOMAIN = "example.org"
WAKE_DELAY = 0.2
RESULTS = ROOT / "bench" / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def token_of(i: int) -> str:
    return f"{i:064x}"


class UA:
    """A SIP user agent on one transport: requests by Call-ID and method, responses by
    Call-ID, arrival times on the loop clock."""

    def __init__(self) -> None:
        self.transport = SipTransport(self._receive)
        self._waiters: dict[tuple[str, str], asyncio.Future[tuple[Any, Flow, float]]] = {}
        self.on_request: Callable[[SipRequest, Flow, float], None] | None = None

    def _receive(self, message: SipRequest | SipResponse, flow: Flow) -> None:
        now = time.time()
        if isinstance(message, SipRequest):
            if self.on_request is not None:
                self.on_request(message, flow, now)
            return
        if message.status < 200 and message.status != 100:
            return
        key = (message.call_id, "final" if message.status >= 200 else "trying")
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result((message, flow, now))

    def expect(self, call_id: str, what: str) -> asyncio.Future[tuple[Any, Flow, float]]:
        future = asyncio.get_running_loop().create_future()
        self._waiters[(call_id, what)] = future
        return future

    def request(self, method: str, uri: str, transport: str, user: str, **extra: str) -> SipRequest:
        host, port = self.transport.local[transport]
        headers = [
            ("Via", f"SIP/2.0/{transport} {host}:{port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{user}@{DOMAIN}>;tag={new_tag()}"),
            ("To", f"<sip:{uri.split(':')[1].split('@')[0]}@{DOMAIN}>"),
            ("Call-ID", new_call_id()),
            ("CSeq", f"1 {method}"),
            *extra.items(),
        ]
        return SipRequest(method, uri, headers)


async def register(ua: UA, node: Flow, user: str, params: str) -> float:
    """REGISTER ``user`` from ``ua`` over TCP (the connection stays open); the send time."""
    if "TCP" not in ua.transport.local:
        await ua.transport.listen_stream("127.0.0.1", 0)
    host, port = ua.transport.local["TCP"]
    contact = f"<sip:{user}@{host}:{port};transport=tcp{params}>"
    request = ua.request("REGISTER", f"sip:{DOMAIN}", "TCP", user, Contact=contact)
    request.headers.set("To", f"<sip:{user}@{DOMAIN}>")
    request.headers.set("Expires", "3600")
    done = ua.expect(request.call_id, "final")
    sent = time.time()
    ua.transport.send(request, node)
    response, _, _ = await asyncio.wait_for(done, 10)
    if response.status != 200:
        raise RuntimeError(f"REGISTER {user}: {response.status}")
    return sent


async def paced(rate: float, count: int, work: Callable[[int], Awaitable[None]]) -> None:
    """Start ``work(i)`` at ``rate`` per second (open loop) and wait for all of them."""
    start = time.monotonic()
    tasks = []
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(work(i)))
    await asyncio.gather(*tasks)


async def setup_devices(stack: CallStack, count: int) -> None:
    settings = load_settings(stack.base / "node.toml")
    now = datetime.now(UTC)
    async with await open_store(settings.store_url) as store:
        user = await store.signin.get_user_by_name("u1")
        for i in range(count):
            await store.signin.put_device(
                Device(
                    id=f"dev-{i}",
                    user_id=user.id,
                    platform=Platform.IOS,
                    service="APNS",
                    push_token=token_of(i),
                    push_key=os.urandom(32),
                    push_key_id="k1",
                    created_at=now,
                    updated_at=now,
                    pn_prid=token_of(i),
                )
            )
    ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    async with httpx.AsyncClient(base_url=stack.apns + "/_sim", verify=ctx, http2=True) as sim:
        for i in range(count):
            (
                await sim.post("/devices", json={"token": token_of(i), "topic": BUNDLE})
            ).raise_for_status()


async def delivered(stack: CallStack) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    async with httpx.AsyncClient(base_url=stack.apns + "/_sim", verify=ctx, http2=True) as sim:
        first: dict[str, float] = {}
        for d in (await sim.get("/delivered")).json():  # the call push, not a follow-up
            first[d["token"]] = min(d["received_at"], first.get(d["token"], d["received_at"]))
        return first


def flows(stack: CallStack) -> tuple[Flow, Flow]:
    host, port = stack.sip_tcp.split(":")
    uhost, uport = stack.sip_udp.split(":")
    return Flow("TCP", host, int(port)), Flow("UDP", uhost, int(uport))


def push_params(i: int) -> str:
    return f";pn-provider=apns;pn-prid={token_of(i)};pn-param={TEAM_ID}.{BUNDLE}.voip"


def answering(ua: UA, arrived: asyncio.Future[float]) -> None:
    """``ua`` answers the first INVITE it gets with 486 and notes when it came."""

    def answer(request: SipRequest, flow: Flow, at: float) -> None:
        if request.method == "INVITE" and not arrived.done():
            arrived.set_result(at)
            ua.transport.send(make_response(request, 486, to_tag=new_tag()), flow)

    ua.on_request = answer


async def calls(
    stack: CallStack, rate: float, count: int, *, first: int, woken: bool
) -> tuple[dict[str, float], list[float], int]:
    """INVITEs to devices ``first`` .. ``first + count - 1`` at ``rate``/s. ``woken``: the
    devices are in the background and register again ``WAKE_DELAY`` after the INVITE (times
    re-REGISTER -> INVITE); else they are connected (times INVITE -> INVITE). Returns the
    INVITE send times by push token, the forwarding latencies and the failures."""
    node_tcp, node_udp = flows(stack)
    caller = UA()
    await caller.transport.listen_udp("127.0.0.1", 0)
    live: dict[int, UA] = {}
    sem = asyncio.Semaphore(50)

    async def prepare(i: int) -> None:
        async with sem:
            ua = UA()
            await register(ua, node_tcp, f"d{i}", push_params(i) if woken else "")
            if woken:
                await ua.transport.close()  # the app goes to the background
            else:
                live[i] = ua

    await asyncio.gather(*(prepare(i) for i in range(first, first + count)))
    await asyncio.sleep(0.5)  # the node notices the closed connections
    invite_sent: dict[str, float] = {}
    latency: list[float] = []
    failures = 0

    async def call(n: int) -> None:
        nonlocal failures
        i = first + n
        arrived: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        device = UA() if woken else live[i]
        answering(device, arrived)
        invite = caller.request("INVITE", f"sip:d{i}@{DOMAIN}", "UDP", "caller")
        final = caller.expect(invite.call_id, "final")
        sent = invite_sent[token_of(i)] = time.time()
        caller.transport.send(invite, node_udp)
        try:
            if woken:
                await asyncio.sleep(WAKE_DELAY)
                sent = await register(device, node_tcp, f"d{i}", push_params(i))
            latency.append(await asyncio.wait_for(arrived, 5) - sent)
            response, _, _ = await asyncio.wait_for(final, 5)
            caller.transport.send(build_ack(invite, response), node_udp)
        except (TimeoutError, RuntimeError) as exc:
            failures += 1
            print(f"d{i}: {type(exc).__name__} {exc}", file=sys.stderr)
        finally:
            await device.transport.close()

    await paced(rate, count, call)
    await caller.transport.close()
    return invite_sent, latency, failures


async def relay_direct(stack: CallStack, rate: float, count: int, first: int) -> dict[str, float]:
    """Pushes straight from a relay client in this process; send times by token."""
    voucher = await asyncio.to_thread(new_voucher, stack.base / "relay.toml")
    enrollment = await RelayClient.enroll(stack.relay_url, voucher, "bench-direct")
    sent: dict[str, float] = {}
    payload = jwe.encrypt(b'{"type":"call"}', os.urandom(32), kid="k1")
    async with RelayClient(stack.relay_url, enrollment.refresh_token) as client:
        await client.access_token()

        async def push(n: int) -> None:
            token = token_of(first + n)
            sent[token] = time.time()
            await client.send_encrypted(
                target=token,
                service="APNS",
                push_type=PushType.VOIP,
                jwe_payload=payload,
                tracking_id=f"bench-{n}",
            )

        await paced(rate, count, push)
    return sent


async def node_push_sent(stack: CallStack) -> tuple[float, float, int]:
    """p50, p99 (ms) and count of the node's own ``ucpush_call_push_sent_seconds``
    histogram (INVITE -> push sent), interpolated within its buckets."""
    async with httpx.AsyncClient(base_url=stack.api) as api:
        text = (await api.get("/metrics")).text
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("ucpush_call_push_sent_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0

    def quantile(q: float) -> float:
        rank, lower, below = q * total, 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if bound == float("inf"):
                    return lower * 1000
                share = (rank - below) / (count - below) if count > below else 1.0
                return (lower + (bound - lower) * share) * 1000
            lower, below = bound, count
        return lower * 1000

    return quantile(0.5), quantile(0.99), int(total)


def since(sent: dict[str, float], received: dict[str, float]) -> list[float]:
    return [received[t] - at for t, at in sent.items() if t in received]


def row(name: str, values: list[float], base: list[float] | None = None) -> str:
    p50, p99 = pct(values, 0.5), pct(values, 0.99)
    ratio = ""
    if base:
        ratio = f"{p50 / pct(base, 0.5):.2f}x / {p99 / pct(base, 0.99):.2f}x"
    return f"| {name} | {len(values)} | {p50:.2f} | {p99:.2f} | {ratio} |"


async def run(args: argparse.Namespace, stack: CallStack) -> None:
    count = int(args.rate * args.seconds)
    await setup_devices(stack, 3 * count)
    woken_sent, forwarded, woken_failures = await calls(
        stack, args.rate, count, first=0, woken=True
    )
    _, live, live_failures = await calls(stack, args.rate, count, first=count, woken=False)
    direct_sent = await relay_direct(stack, args.rate, count, first=2 * count)
    await asyncio.sleep(1.0)
    received = await delivered(stack)
    sent_p50, sent_p99, sent_count = await node_push_sent(stack)
    load = os.getloadavg()
    push = since(woken_sent, received)
    direct = since(direct_sent, received)
    node_added = [pct(push, q) - pct(direct, q) for q in (0.5, 0.99)]
    lines = [
        "# Call wake-up latency",
        "",
        f"{datetime.now(UTC).isoformat(timespec='seconds')} - {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average after the "
        f"run {load[0]:.2f}. Generated by `bench/call_wakeup.py` (method in its docstring): "
        f"{args.rate:g} wake-ups/s for {args.seconds:g} s, every component its own process.",
        "",
        "| latency | samples | p50 (ms) | p99 (ms) | vs baseline p50 / p99 |",
        "|---|---|---|---|---|",
        row("INVITE -> push at APNs sim (node + relay + sim)", push, direct),
        row("baseline: relay client -> push at APNs sim (relay + sim)", direct),
        f"| node: INVITE -> push sent (its histogram, {sent_count} calls incl. the live "
        f"phase's pushes to connected devices) | {sent_count} | {sent_p50:.2f} | "
        f"{sent_p99:.2f} | |",
        row("re-REGISTER -> INVITE forwarded to the woken device", forwarded, live),
        row("baseline: INVITE -> INVITE forwarded to a live device", live),
        "",
        f"Pushes seen at the simulator: {len(push)} of {count} wake-ups; failed wake-ups "
        f"{woken_failures}, failed live calls {live_failures}.",
        f"What the node adds before the push (INVITE -> push minus the relay-direct baseline): "
        f"p50 {node_added[0]:.2f} ms, p99 {node_added[1]:.2f} ms (difference of percentiles).",
        "",
        "## Targets (issue 5)",
        "",
        "- push sent p99 < 10 ms after the INVITE: "
        f"**{'met' if sent_p99 < 10 else 'missed'}** (the node's histogram: p99 "
        f"{sent_p99:.2f} ms; end to end through relay and simulator p99 {pct(push, 0.99):.2f} ms)",
        "- forwarded p99 < 5 ms after the re-REGISTER: "
        f"**{'met' if pct(forwarded, 0.99) < 5 else 'missed'}** "
        f"(p99 {pct(forwarded, 0.99):.2f} ms)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "call_wakeup.md").write_text(text)
    summary = {
        "rate": args.rate,
        "seconds": args.seconds,
        "push_ms": {"p50": pct(push, 0.5), "p99": pct(push, 0.99), "n": len(push)},
        "relay_direct_ms": {"p50": pct(direct, 0.5), "p99": pct(direct, 0.99), "n": len(direct)},
        "forwarded_ms": {"p50": pct(forwarded, 0.5), "p99": pct(forwarded, 0.99)},
        "live_forwarded_ms": {"p50": pct(live, 0.5), "p99": pct(live, 0.99)},
        "node_push_sent_ms": {"p50": sent_p50, "p99": sent_p99, "n": sent_count},
        "failures": {"woken": woken_failures, "live": live_failures},
        "load_average": load[0],
    }
    (RESULTS / "call_wakeup.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="wake-ups per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    args = parser.parse_args()
    # The stack's set-up runs its own event loops, so it starts outside ours.
    with (
        tempfile.TemporaryDirectory(prefix="ucpush-bench-") as tmp,
        call_stack(Path(tmp), sip_toml="authenticate = false\n") as stack,
    ):
        asyncio.run(run(args, stack))


if __name__ == "__main__":
    main()
