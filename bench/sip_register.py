"""SIP node under SIPp load, beside Kamailio in the same run: registrations/s with RFC 8599
pn-* Contact parameters and digest auth, INVITE -> forwarded-INVITE proxy overhead, and memory
with many bindings.

    .venv/bin/python bench/sip_register.py [--quick] [--no-profile]

Needs ``sipp`` (Debian sip-tester) and ``kamailio``/``kamcmd``; writes
bench/results/sip_register.{md,json}. Not run by the test suite.

Both servers run on loopback UDP as separate processes: ``ucpush serve`` (one process, SQLite
store in a temporary data dir, users written to it beforehand) and Kamailio with
deploy/kamailio/bench-registrar.cfg (one UDP worker, ``-n 1``). Each measurement drives both
with the same SIPp scenario and options.

* Registration throughput: every SIPp call is one authenticated registration, i.e. two REGISTER
  transactions (the first is challenged with 401, the second carries MD5 credentials, the only
  algorithm SIPp answers; the ``[authentication]`` keyword comes from the users CSV). Closed
  loop: at most ``--concurrency`` registrations in flight, as fast as the server answers (an
  open loop above capacity measures UDP retransmission storms, not the server); rate =
  successful registrations / wall time from SIPp's statistics CSV (``-trace_stat``), times from
  ``-trace_rtt`` (whole registration, 1 ms resolution).
* Proxy overhead: a SIPp UAS registers as ``callee``; a SIPp UAC calls it through the server
  at each ``--call-rates`` rate (and directly, the loopback + SIPp floor). Both log messages
  with timestamps (``-trace_msg``); per Call-ID: UAC sends INVITE -> UAS receives the forwarded
  one, and the UAS's 200 -> UAC.
* Profile: py-spy (when installed) samples the node during a repeat of the registration run
  and of the fastest proxy run, after the measured ones (sampling slows the process down).
* The proxy runs' callee registers without pn-* parameters: an INVITE to a push binding goes
  through the call push engine as well, which is not the proxy overhead measured here.
* The machine is shared: the load average before and after the run is recorded.
* Bindings: the node's store gets ``--bindings`` users and all but the last
  ``--bindings-through-node`` of their bindings written directly (registering 100,000 through
  the node would take longer than the bench should); the node then starts on it and SIPp
  registers the rest through it. The node holds every binding in memory (its location cache,
  loaded from the store at start, written behind to it): RSS before and after, per newly
  registered AOR, and the SQLite file size are reported.
  Kamailio gets all ``--bindings`` registrations through SIPp; its number is the shared memory
  in use (``kamcmd core.shmmem``), where usrloc keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from ucpush.sip.digest import MD5, SHA256, compute_ha1
from ucpush.store import open_store
from ucpush.store.repository import Binding, SipUser
from ucpush.store.sql import sip_bindings, sip_users

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KAMAILIO_CFG = ROOT / "deploy" / "kamailio" / "bench-registrar.cfg"
DOMAIN = "bench.example"
PASSWORD = "secret"
TIMER_J = 32.0
PN = "pn-provider=apns;pn-prid=[field1];pn-param=TEAM1234.org.example.phone.voip"

REGISTER_XML = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register">
  <send retrans="500" start_rtd="1"><![CDATA[

      REGISTER sip:{DOMAIN} SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:[field0]@{DOMAIN}>;tag=[call_number]
      To: <sip:[field0]@{DOMAIN}>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];{PN}>
      Expires: 3600
      Content-Length: 0

    ]]></send>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[

      REGISTER sip:{DOMAIN} SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:[field0]@{DOMAIN}>;tag=[call_number]
      To: <sip:[field0]@{DOMAIN}>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];{PN}>
      [field2]
      Expires: 3600
      Content-Length: 0

    ]]></send>
  <recv response="200" rtd="1"/>
</scenario>
"""

# The proxy runs' callee is an awake device without push parameters: what is measured is the
# proxy itself, not the call push engine (which an INVITE to a push binding goes through).
CALLEE_REGISTER_XML = REGISTER_XML.replace(f";{PN}>", ">")

UAC_XML = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac">
  <send retrans="500"><![CDATA[

      INVITE sip:callee@{DOMAIN} SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:caller@{DOMAIN}>;tag=[call_number]
      To: <sip:callee@{DOMAIN}>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Content-Length: 0

    ]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch];rport
      [routes]
      Max-Forwards: 70
      From: <sip:caller@{DOMAIN}>;tag=[call_number]
      To: <sip:callee@{DOMAIN}>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Content-Length: 0

    ]]></send>
  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch];rport
      [routes]
      Max-Forwards: 70
      From: <sip:caller@{DOMAIN}>;tag=[call_number]
      To: <sip:callee@{DOMAIN}>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Content-Length: 0

    ]]></send>
  <recv response="200"/>
</scenario>
"""

UAS_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uas">
  <recv request="INVITE" rrs="true"/>
  <send><![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Length: 0

    ]]></send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send><![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]></send>
</scenario>
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    work: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until the server answers an OPTIONS on UDP (any response will do)."""
    request = (
        f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKready;rport\r\n"
        f"From: <sip:probe@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\n"
        "Call-ID: ready\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        probe = request.replace("127.0.0.1:9", f"127.0.0.1:{sock.getsockname()[1]}").encode()
        for _ in range(150):
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            sock.sendto(probe, ("127.0.0.1", port))
            try:
                sock.recv(65535)
                return
            except TimeoutError:
                continue
    raise RuntimeError("server never answered")


def seed_users(db: Path, count: int) -> None:
    """``count`` users (u000000...) and ``callee``, password PASSWORD, written in one
    transaction: the store API adds one user per transaction, far too slow for 100,000."""
    asyncio.run(_create_schema(db))
    now = datetime.now(UTC)
    rows = []
    for user in ["callee", *(f"u{i:06d}" for i in range(count))]:
        ha1 = {a: compute_ha1(user, DOMAIN, PASSWORD, a) for a in (MD5, SHA256)}
        sip_user = SipUser(f"sip:{user}@{DOMAIN}", user, DOMAIN, ha1[MD5], ha1[SHA256], now)
        rows.append(dataclasses.asdict(sip_user))  # as the store's add_user does
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sip_users.insert(), rows)
    engine.dispose()


async def _create_schema(db: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{db}")
    await store.close()


def start_node(work: Path, users: int, bindings: int = 0) -> Server:
    """``ucpush serve`` on a fresh store holding ``users`` users and a push binding for each
    of the first ``bindings``."""
    work.mkdir()
    data = work / "var"
    data.mkdir()
    seed_users(data / "ucpush.db", users)
    if bindings:
        seed_bindings(data / "ucpush.db", bindings)
    port = free_port()
    config = work / "ucpush.toml"
    config.write_text(
        f'[log]\nlevel = "warning"\n[sip]\nhost = "127.0.0.1"\ntransports = ["udp"]\n'
        f'udp_port = {port}\ndomains = ["{DOMAIN}"]\ndigest_algorithms = ["MD5"]\n'
    )
    env = {**os.environ, "UCPUSH_CONFIG": str(config), "UCPUSH_DATA_DIR": str(data)}
    process = subprocess.Popen(
        [sys.executable, "-m", "ucpush", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work / "node.log").open("wb"),
    )
    server = Server("ucpush", port, process, work)
    _ready_or_stop(server)
    return server


def start_kamailio(work: Path) -> Server:
    work.mkdir()
    port = free_port()
    kamailio = shutil.which("kamailio")
    assert kamailio is not None
    process = subprocess.Popen(
        [
            kamailio,
            "-f",
            str(KAMAILIO_CFG),
            "-DD",
            "-E",
            "-n",
            "1",
            "-m",
            "512",
            "-l",
            f"udp:127.0.0.1:{port}",
            "-Y",
            str(work),
            "-A",
            f'CTL_SOCKET="unix:{work / "ctl"}"',
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "kamailio.log").open("wb"),
    )
    server = Server("kamailio", port, process, work)
    _ready_or_stop(server)
    return server


def _ready_or_stop(server: Server) -> None:
    try:
        wait_ready(server.port, server.process)
    except BaseException:
        server.stop()
        raise


def kamailio_shm_used(server: Server) -> int:
    out = subprocess.run(
        ["kamcmd", "-s", f"unix:{server.work / 'ctl'}", "core.shmmem"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    match = re.search(r"real_used: (\d+)", out)
    assert match, out
    return int(match.group(1))


@dataclass
class SippRun:
    cwd: Path
    code: int

    def stats(self) -> dict[str, str]:
        """The last row of SIPp's statistics CSV (-trace_stat)."""
        (path,) = [p for p in self.cwd.glob("*_.csv")]
        with path.open() as f:
            rows = list(csv.reader(f, delimiter=";"))
        return dict(zip(rows[0], rows[-1], strict=False))

    def response_times_ms(self) -> list[float]:
        values: list[float] = []
        for path in self.cwd.glob("*_rtt.csv"):
            with path.open() as f:
                next(f)
                values += [float(line.split(";")[1]) for line in f if line.strip()]
        return values

    def messages(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.cwd.glob("*_messages.log"))


def sipp(
    cwd: Path,
    scenario: str,
    target: int | None,
    *extra: str,
    timeout: float = 900,
    background: bool = False,
    watch: subprocess.Popen[bytes] | None = None,
) -> SippRun | subprocess.Popen[bytes]:
    """Run SIPp in ``cwd`` with ``scenario`` (XML text), aimed at 127.0.0.1:``target`` (None:
    a UAS waiting for requests)."""
    cwd.mkdir(parents=True)
    (cwd / "scenario.xml").write_text(scenario)
    args = ["sipp"]
    if target is not None:
        args.append(f"127.0.0.1:{target}")
    args += ["-sf", "scenario.xml", "-i", "127.0.0.1", "-nostdin", "-trace_err"]
    args += ["-p", str(free_port()), "-auth_uri", DOMAIN, *extra]  # a later -p wins
    process = subprocess.Popen(
        args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    if background:
        return process
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        # A server that died would leave SIPp retransmitting into the void for minutes.
        dead = watch is not None and watch.poll() is not None
        if dead or time.monotonic() > deadline:
            process.kill()
            process.wait()
            what = f"server exited with {watch.returncode}" if dead else "timed out"
            raise RuntimeError(f"sipp in {cwd}: {what}")
        time.sleep(0.2)
    return SippRun(cwd, process.returncode)


def users_csv(path: Path, count: int, offset: int = 0) -> Path:
    lines = ["SEQUENTIAL"]
    # SIPp reads the [authentication] keyword from the file (it cannot nest [field0] in it).
    auth = "[authentication username={} password=" + PASSWORD + "]"
    lines += [
        f"u{i:06d};{i:032x};{auth.format(f'u{i:06d}')}" for i in range(offset, offset + count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def register_closed_loop(server: Server, work: Path, users: Path, n: int, conc: int) -> dict:
    run = sipp(
        work, REGISTER_XML, server.port,
        "-inf", str(users), "-r", "100000", "-l", str(conc), "-m", str(n),
        "-trace_stat", "-fd", "1", "-trace_rtt", "-rtt_freq", "1", watch=server.process,
    )  # fmt: skip
    assert isinstance(run, SippRun)
    return _register_result(run)


def _register_result(run: SippRun) -> dict:
    stats = run.stats()
    ok, failed = int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])
    elapsed = float(stats["CurrentTime"].split()[-1]) - float(stats["StartTime"].split()[-1])
    times = run.response_times_ms()
    return {
        "registrations": ok,
        "failed": failed,
        "retransmissions": int(stats["Retransmissions(C)"]),
        "seconds": round(elapsed, 3),
        "registrations_per_s": round(ok / elapsed, 1),
        "register_requests_per_s": round(2 * ok / elapsed, 1),
        "p50_ms": percentile(times, 50) if times else None,
        "p99_ms": percentile(times, 99) if times else None,
    }


_MSG_RE = re.compile(
    r"-{10,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n"
    r"UDP message (sent|received)[^\n]*\n\n([^\n]*)\n(.*?)(?=\n-{10,} |\Z)",
    re.S,
)


def _message_times(log: str, direction: str, first_line: str) -> dict[str, float]:
    """Call-ID -> timestamp of the first message ``direction`` whose first line starts with
    ``first_line`` (SIPp's -trace_msg log)."""
    times: dict[str, float] = {}
    for stamp, way, line, rest in _MSG_RE.findall(log):
        if way != direction or not line.startswith(first_line):
            continue
        call_id = re.search(r"^Call-ID: *(\S+)", rest, re.M | re.I)
        if call_id and call_id.group(1) not in times:
            moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
            times[call_id.group(1)] = moment.timestamp()
    return times


def _one_way_ms(sent: dict[str, float], received: dict[str, float]) -> list[float]:
    return [(received[c] - sent[c]) * 1000 for c in sent if c in received]


def proxy_overhead(server: Server | None, work: Path, calls: int, rate: int) -> dict:
    """INVITE and 200 one-way latencies UAC -> ``server`` -> UAS, where the UAS registered
    first (None: UAC -> UAS directly, the loopback + SIPp floor)."""
    uas_port = free_port()
    if server is not None:
        callee = work / "callee.csv"
        work.mkdir(parents=True)
        callee.write_text(
            f"SEQUENTIAL\ncallee;0;[authentication username=callee password={PASSWORD}]\n"
        )
        reg = sipp(
            work / "register", CALLEE_REGISTER_XML, server.port, "-inf", str(callee), "-m", "1",
            "-p", str(uas_port), "-timeout", "10s", "-timeout_error", watch=server.process,
        )  # fmt: skip
        assert isinstance(reg, SippRun) and reg.code == 0, f"callee registration failed: {work}"
    uas = sipp(work / "uas", UAS_XML, None, "-p", str(uas_port), "-trace_msg", background=True)
    assert isinstance(uas, subprocess.Popen)
    try:
        time.sleep(0.3)  # the UAS binds its port
        uac = sipp(
            work / "uac", UAC_XML, uas_port if server is None else server.port,
            "-r", str(rate), "-m", str(calls), "-trace_msg", "-trace_stat", "-fd", "1",
            watch=None if server is None else server.process,
        )  # fmt: skip
    finally:
        uas.terminate()
        uas.wait(10)
    assert isinstance(uac, SippRun)
    uac_log = uac.messages()
    uas_log = "".join(p.read_text(errors="replace") for p in (work / "uas").glob("*_messages.log"))
    # The first 200 per Call-ID on each side is the INVITE's (the BYE's comes later); a 100
    # Trying from the proxy is skipped by matching on "200".
    forward = _one_way_ms(
        _message_times(uac_log, "sent", "INVITE"), _message_times(uas_log, "received", "INVITE")
    )
    back = _one_way_ms(
        _message_times(uas_log, "sent", "SIP/2.0 200"),
        _message_times(uac_log, "received", "SIP/2.0 200"),
    )
    stats = uac.stats()
    return {
        "calls": int(stats["SuccessfulCall(C)"]),
        "failed": int(stats["FailedCall(C)"]),
        "rate_per_s": rate,
        "samples": len(forward),
        "invite_p50_ms": round(percentile(forward, 50), 3),
        "invite_p99_ms": round(percentile(forward, 99), 3),
        "invite_max_ms": round(max(forward), 3),
        "ok_p50_ms": round(percentile(back, 50), 3),
        "ok_p99_ms": round(percentile(back, 99), 3),
    }


def seed_bindings(db: Path, count: int) -> None:
    """One push binding (RFC 8599 params, UDP contact) for each of the first ``count`` users,
    in one transaction, with the columns the store writes (``sql_sip._binding_values``)."""
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        user = f"u{i:06d}"
        contact = f"sip:{user}@127.0.0.1:{10000 + i % 50000};{PN.replace('[field1]', f'{i:032x}')}"
        binding = Binding(
            id=f"{i:032x}", aor=f"sip:{user}@{DOMAIN}", contact=contact,
            expires_at=now + timedelta(hours=1), call_id=f"seed-{i}", cseq=2, updated_at=now,
            instance_id=f"<urn:uuid:00000000-0000-0000-0000-{i:012x}>",
            source_transport="UDP", source_host="127.0.0.1", source_port=10000 + i % 50000,
            pn_provider="apns", pn_prid=f"{i:032x}", pn_param="TEAM1234.org.example.phone.voip",
            user_agent="bench",
        )  # fmt: skip
        values = dataclasses.asdict(binding)
        values["path"] = list(binding.path)
        rows.append(values)
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sip_bindings.insert(), rows)
    engine.dispose()


async def store_op_times(n: int = 200) -> dict[str, float]:
    """Mean latency of the store calls one REGISTER makes, in-process (file SQLite)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"sqlite+aiosqlite:///{tmp}/ops.db")
        now = datetime.now(UTC)
        await store.sip.add_user(SipUser(f"sip:a@{DOMAIN}", "a", DOMAIN, "0" * 32, "0" * 64, now))
        aor = f"sip:a@{DOMAIN}"
        binding = Binding(
            id="b", aor=aor, contact="sip:a@127.0.0.1", expires_at=now + timedelta(hours=1),
            call_id="c", cseq=1, updated_at=now,
        )  # fmt: skip
        ops = {
            "get_user": lambda: store.sip.get_user("a", DOMAIN),
            "list_bindings": lambda: store.sip.list_bindings(aor),
            "save_bindings": lambda: store.sip.save_bindings(aor, [binding], []),
        }
        times = {}
        for name, op in ops.items():
            start = time.perf_counter()
            for _ in range(n):
                await op()
            times[name] = round((time.perf_counter() - start) / n * 1000, 3)
        await store.close()
    return times


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the node for ``seconds`` (collapsed stacks), if py-spy is there."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "100", "-f", "raw",
         "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def top_frames(collapsed: Path, count: int = 12) -> dict[str, list[tuple[str, float]]]:
    """Top functions by own samples, and the node's own (ucpush.sip/ucpush.store) functions by
    inclusive samples, as % of non-idle samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    # Idle: the event loop in select (no Python frame below Runner.run), aiosqlite's thread
    # and the default executor's threads waiting for work.
    idle = re.compile(
        r"^Runner\.run \(|_connection_worker_thread \(aiosqlite/core\.py:59\)"
        r"|^_worker \(concurrent/futures/thread\.py:81\)"
    )
    ours = re.compile(r"\(ucpush/(sip|store)/")
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if not frames or idle.search(frames[-1]):
            continue
        total += int(n)
        own[frames[-1]] += int(n)
        for frame in {f for f in frames if ours.search(f)}:
            inclusive[frame] += int(n)

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * v / total, 1)) for f, v in c.most_common(count)]

    return {"own": pct(own), "inclusive": pct(inclusive)} if total else {}


def measure_memory(work: Path, bindings: int, through_node: int, conc: int) -> dict:
    """The node's RSS with ``bindings`` bindings, the last ``through_node`` of them registered
    through it by SIPp (the per-AOR cost of the live path), the rest written to the store."""
    work.mkdir()
    node = start_node(work / "node", bindings, bindings - through_node)
    process = node.process
    try:
        before = rss_kb(process.pid)
        users = users_csv(work / "users.csv", through_node, offset=bindings - through_node)
        run = register_closed_loop(node, work / "sipp", users, through_node, conc)
        after = rss_kb(process.pid)
        # Completed UDP server transactions are kept for Timer J (64*T1 = 32 s): wait them out
        # so what remains is what the bindings cost.
        time.sleep(TIMER_J + 3)
        settled = rss_kb(process.pid)
    finally:
        node.stop()
    db = work / "node" / "var" / "ucpush.db"
    return {
        "bindings": bindings,
        "registered_through_node": run["registrations"],
        "rss_mb_before": round(before / 1024, 1),
        "rss_mb_after": round(after / 1024, 1),
        "rss_mb_settled": round(settled / 1024, 1),
        "rss_kb_per_registered_aor": round((settled - before) / max(1, run["registrations"]), 2),
        "store_mb": round(sum(p.stat().st_size for p in db.parent.glob("ucpush.db*")) / 2**20, 1),
    }


def kamailio_memory(server: Server, work: Path, bindings: int, conc: int) -> dict:
    work.mkdir()
    before = kamailio_shm_used(server)
    users = users_csv(work / "users.csv", bindings)
    run = register_closed_loop(server, work / "sipp", users, bindings, conc)
    after = kamailio_shm_used(server)
    return {
        "bindings": run["registrations"],
        "shm_mb_used": round(after / 2**20, 1),
        "shm_mb_for_bindings": round((after - before) / 2**20, 1),
        "registrations_per_s": run["registrations_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node-registrations", type=int, default=3000)
    parser.add_argument("--kamailio-registrations", type=int, default=30000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--call-rates", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--call-seconds", type=int, default=10)
    parser.add_argument("--bindings", type=int, default=100_000)
    parser.add_argument("--bindings-through-node", type=int, default=2000)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.node_registrations, args.kamailio_registrations = 300, 3000
        args.call_seconds, args.bindings, args.bindings_through_node = 3, 5000, 200
    for tool in ("sipp", "kamailio", "kamcmd"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (deploy/debian-packages.txt)")

    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "sipp": _version(["sipp", "-v"]),
        "kamailio": _version(["kamailio", "-v"]),
        "args": vars(args),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="sip-bench-") as tmp:
        work = Path(tmp)
        results["store_ms_per_call"] = asyncio.run(store_op_times())
        print("store calls (ms):", results["store_ms_per_call"], flush=True)
        with (
            running(start_node(work / "node", args.users)) as node,
            running(start_kamailio(work / "kamailio")) as kamailio,
        ):
            users = users_csv(work / "users.csv", args.users)
            reg = {
                    "ucpush": register_closed_loop(
                        node, work / "reg-node", users, args.node_registrations,
                        args.concurrency,
                    ),
                    "kamailio": register_closed_loop(
                        kamailio, work / "reg-kam", users, args.kamailio_registrations,
                        args.concurrency,
                    ),
                }  # fmt: skip
            results["register"] = reg
            print("register:", reg, flush=True)
            # Each rate for --call-seconds; a fresh callee (and UAS) per run.
            results["proxy"] = {}
            for rate in args.call_rates:
                calls = rate * args.call_seconds
                results["proxy"][str(rate)] = {
                    name: proxy_overhead(server, work / f"proxy-{name}-{rate}", calls, rate)
                    for name, server in (
                        ("ucpush", node),
                        ("kamailio", kamailio),
                        ("direct", None),
                    )
                }
            if not args.no_profile:
                results["node_profile"] = profile_runs(node, work, users, args)
            print("proxy:", results["proxy"], flush=True)
            results["memory"] = {
                "kamailio": kamailio_memory(
                    kamailio, work / "mem-kam", args.bindings, args.concurrency
                )
            }
        results["memory"]["ucpush"] = measure_memory(
            work / "mem-node", args.bindings, args.bindings_through_node, args.concurrency
        )
        print("memory:", results["memory"], flush=True)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sip_register.json").write_text(json.dumps(results, indent=2) + "\n")
    table = render(results)
    (RESULTS / "sip_register.md").write_text(table)
    print(table)


def render(r: dict) -> str:
    reg, mem = r["register"], r["memory"]
    nmem, kmem = mem["ucpush"], mem["kamailio"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3g}x" if b else "-"

    def over_floor(p: dict, direct: dict, key: str) -> float:
        """Minus the direct path's median: a p99 minus the direct p99 would subtract one
        run's outliers from another's (and go negative on a busy machine)."""
        return round(p[key] - direct["invite_p50_ms"], 3)

    proxy_rows = []
    for rate, runs in r["proxy"].items():
        node, kam, direct = runs["ucpush"], runs["kamailio"], runs["direct"]
        proxy_rows += [
            (f"{rate} calls/s: INVITE -> forwarded INVITE p50 / p99 (ms)",
             f"{node['invite_p50_ms']} / {node['invite_p99_ms']}",
             f"{kam['invite_p50_ms']} / {kam['invite_p99_ms']}"),
            (f"{rate} calls/s: same, minus the direct UAC -> UAS median "
             f"{direct['invite_p50_ms']} (direct p99: {direct['invite_p99_ms']})",
             f"{over_floor(node, direct, 'invite_p50_ms')} / "
             f"{over_floor(node, direct, 'invite_p99_ms')}",
             f"{over_floor(kam, direct, 'invite_p50_ms')} / "
             f"{over_floor(kam, direct, 'invite_p99_ms')}"),
            (f"{rate} calls/s: 200 OK back through the proxy p50 / p99 (ms)",
             f"{node['ok_p50_ms']} / {node['ok_p99_ms']}",
             f"{kam['ok_p50_ms']} / {kam['ok_p99_ms']}"),
            (f"{rate} calls/s: calls completed / failed", f"{node['calls']} / {node['failed']}",
             f"{kam['calls']} / {kam['failed']}"),
        ]  # fmt: skip
    projected = nmem["rss_mb_before"] + nmem["rss_kb_per_registered_aor"] * nmem["bindings"] / 1024
    ops = r["store_ms_per_call"]
    per_reg = 2 * ops["list_bindings"] + ops["get_user"] + ops["save_bindings"]
    lowest = r["proxy"][min(r["proxy"], key=int)]
    node_p99 = over_floor(lowest["ucpush"], lowest["direct"], "invite_p99_ms")

    rows = [
        ("Registrations/s (2 REGISTERs each: 401, then credentials)",
         reg["ucpush"]["registrations_per_s"], reg["kamailio"]["registrations_per_s"]),
        ("REGISTER requests/s", reg["ucpush"]["register_requests_per_s"],
         reg["kamailio"]["register_requests_per_s"]),
        ("Registration time p50 / p99 (ms, SIPp rtd, 1 ms resolution)",
         f"{reg['ucpush']['p50_ms']:.0f} / {reg['ucpush']['p99_ms']:.0f}",
         f"{reg['kamailio']['p50_ms']:.0f} / {reg['kamailio']['p99_ms']:.0f}"),
        ("Failed registrations / retransmissions",
         f"{reg['ucpush']['failed']} / {reg['ucpush']['retransmissions']}",
         f"{reg['kamailio']['failed']} / {reg['kamailio']['retransmissions']}"),
        *proxy_rows,
        (f"Memory with {nmem['bindings']:,} / {kmem['bindings']:,} bindings",
         f"{nmem['rss_mb_after']} MB RSS (+ {nmem['store_mb']} MB SQLite file)",
         f"{kmem['shm_mb_used']} MB shm used ({kmem['shm_mb_for_bindings']} MB for bindings)"),
    ]  # fmt: skip
    a = r["args"]
    lines = [
        "# SIP registrar and proxy: ucpush node beside Kamailio",
        "",
        f"{r['date']} - {r['machine']}; Python {r['python']}; {r['sipp']}; {r['kamailio']}.",
        "Generated by `bench/sip_register.py` (see its docstring for the method). Loopback UDP,",
        f"SIPp closed loop with {a['concurrency']} registrations in flight",
        f"({a['node_registrations']:,} against the node, {a['kamailio_registrations']:,} against",
        f"Kamailio, {a['users']:,} users cycled), RFC 8599 pn-* Contact params, MD5 digest;",
        f"calls for {a['call_seconds']} s at each rate for the proxy. Kamailio: one UDP worker, no",
        "user database (one shared password), bindings in memory; the node: one process,",
        "bindings in memory (written behind to its SQLite store), accounts read from the store",
        "and cached. The callee of the proxy runs has no pn-* parameters (no call push).",
        f"Load average (1/5/15 min) before: {r['load_average_before']}, after: "
        f"{r['load_average_after']} (the machine is shared).",
        "",
        "| | ucpush | Kamailio | ucpush / Kamailio |",
        "|---|---|---|---|",
    ]
    for label, ours, theirs in rows:
        both = isinstance(ours, float | int) and isinstance(theirs, float | int)
        lines.append(f"| {label} | {ours} | {theirs} | {ratio(ours, theirs) if both else ''} |")
    lines += [
        "",
        "Proxy times come from SIPp's -trace_msg stamps, which are SIPp's cached loop time:",
        "about 1 ms resolution, hence a direct floor that can be negative.",
        "",
        "## Targets (issue 4)",
        "",
        _target("≥ 2,000 REGISTER requests/s on one node process",
                reg["ucpush"]["register_requests_per_s"] >= 2000,
                f"{reg['ucpush']['register_requests_per_s']} REGISTER/s "
                f"({reg['ucpush']['registrations_per_s']} registrations/s)"),
        _target("proxy overhead p99 < 5 ms", node_p99 < 5,
                f"p99 {node_p99} ms over the direct median at {min(r['proxy'], key=int)} "
                "calls/s"),
        _target(f"≥ 100,000 bindings in < 300 MB RSS ({nmem['bindings']:,} here)",
                nmem["bindings"] >= 100_000 and nmem["rss_mb_after"] < 300,
                f"{nmem['rss_mb_after']} MB with all of them in memory"),
        "",
        "Bindings: the node holds them all in memory. "
        f"{nmem['bindings'] - nmem['registered_through_node']:,} were written to the store "
        f"before the node started (and loaded by it), {nmem['registered_through_node']:,} "
        f"registered through it by SIPp; RSS {nmem['rss_mb_before']} MB before, "
        f"{nmem['rss_mb_after']} MB right after, {nmem['rss_mb_settled']} MB once Timer J let "
        f"go of the transactions ({nmem['rss_kb_per_registered_aor']} kB of RSS per newly "
        "registered AOR: the binding, its account in the user cache and its nonce in the "
        "replay cache stay; the rest is memory the allocator keeps after the burst's "
        "transactions, which live 32 s for Timer J, are gone; were the RSS growth per AOR "
        f"and permanent, {nmem['bindings']:,} AORs would need about "
        f"{projected:.0f} MB).",
        "",
        "## Where the node's time goes",
        "",
        "Store calls, in-process on file SQLite (ms each): "
        + ", ".join(f"{k} {v}" for k, v in r["store_ms_per_call"].items())
        + ". Before the location cache every registration made them "
        f"({per_reg:.1f} ms per registration, a ceiling of {1000 / per_reg:.0f} "
        "registrations/s); now a REGISTER whose account is cached makes none: bindings are "
        "served from memory and written behind in one transaction per `binding_flush_ms`, "
        "accounts missed by the cache are read together, one query per loop turn.",
    ]  # fmt: skip
    what = {
        "register": "the registration run",
        "proxy": f"the {max(r['proxy'], key=int)} calls/s proxy run",
    }
    for key, prof in r.get("node_profile", {}).items():
        if not prof:
            continue
        lines += [
            "",
            f"py-spy during a repeat of {what[key]} (not the measured one), % of non-idle",
            "samples (aiosqlite core.py:63 is the SQLite call itself, on aiosqlite's thread;",
            "native frames are not shown):",
            "",
            "| own | function | | inclusive | function |",
            "|---|---|---|---|---|",
        ]
        for (f1, p1), (f2, p2) in zip(prof["own"], prof["inclusive"], strict=False):
            lines.append(f"| {p1} | `{f1}` | | {p2} | `{f2}` |")
    return "\n".join(lines) + "\n"


def _target(what: str, met: bool, measured: str) -> str:
    return f"- {what}: **{'met' if met else 'missed'}** ({measured})"


def profile_runs(node: Server, work: Path, users: Path, args: argparse.Namespace) -> dict:
    """py-spy on the node during extra registration and proxy runs: sampling slows the node
    down (ptrace), so these runs are not the measured ones."""
    profiles = {}
    for key, seconds in (("register", 15), ("proxy", args.call_seconds)):
        out = work / f"py-spy-{key}.txt"
        spy = profile(node.process.pid, seconds, out)
        if spy is None:
            return {}
        if key == "register":
            register_closed_loop(node, work / "prof-reg", users, 1000, args.concurrency)
        else:
            rate = max(args.call_rates)
            proxy_overhead(node, work / "prof-proxy", rate * args.call_seconds, rate)
        spy.wait(120)
        profiles[key] = top_frames(out) if out.exists() else {}
    return profiles


@contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def _version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    text = (out.stdout + out.stderr).strip().splitlines()
    return next((line.strip() for line in text if line.strip()), "?")


if __name__ == "__main__":
    main()
