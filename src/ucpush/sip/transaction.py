"""SIP transaction state machines (RFC 3261 §17, with the RFC 6026 "Accepted" state).

Sans-IO: a transaction is driven by ``start()``, ``receive(message)``, ``send_response(...)``
(server side), ``timer_fired(name)`` and ``transport_error()``, and answers each call with a
list of actions for the caller to carry out (send bytes, arm or cancel a timer, hand a message
to the transaction user). Timers are named by their RFC letter; starting a timer that is
already running restarts it. A timer that fires in a state where it no longer applies is
ignored, so a late or uncancelled timer is harmless.

``TransactionLayer`` keeps the table of live transactions, maps incoming messages to them
(§17.1.3, §17.2.3 and the RFC 2543 fallback), and forgets a transaction once it terminates.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum

from ucpush.sip.helpers import build_ack, make_response
from ucpush.sip.message import MAGIC_COOKIE, SipRequest, SipResponse


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 §17.1.1.1 / table 4. ``d`` is Timer D on unreliable transports (≥ 32 s)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0


@dataclass(frozen=True, slots=True)
class Transmit:
    message: SipRequest | SipResponse


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class DeliverToTU:
    message: SipRequest | SipResponse


@dataclass(frozen=True, slots=True)
class Timeout:
    """The transaction gave up (Timer B, F or H): a client TU acts as if it got a 408."""

    timer: str


@dataclass(frozen=True, slots=True)
class TransportError:
    """The transport failed to send: a client TU acts as if it got a 503 (§8.1.3.1)."""


@dataclass(frozen=True, slots=True)
class Terminated:
    """Always the last action of a transaction; the caller may forget it."""


Action = Transmit | StartTimer | CancelTimer | DeliverToTU | Timeout | TransportError | Terminated


class State(StrEnum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Transaction:
    """Common plumbing. ``key`` is the table key the layer filed it under."""

    initial_state: State

    def __init__(
        self, request: SipRequest, *, reliable: bool, timers: TimerConfig = TimerConfig()
    ) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.state = self.initial_state
        self.key: Hashable = None
        self._running: set[str] = set()

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def _start(self, out: list[Action], name: str, seconds: float) -> None:
        self._running.add(name)
        out.append(StartTimer(name, seconds))

    def _cancel(self, out: list[Action], *names: str) -> None:
        for name in names:
            if name in self._running:
                self._running.discard(name)
                out.append(CancelTimer(name))

    def _terminate(self, out: list[Action]) -> list[Action]:
        self._cancel(out, *sorted(self._running))
        self.state = State.TERMINATED
        out.append(Terminated())
        return out

    def _wait_or_terminate(self, out: list[Action], name: str, seconds: float) -> list[Action]:
        # Timers D, I, J and K are zero on reliable transports: terminate at once.
        if seconds <= 0:
            return self._terminate(out)
        self._start(out, name, seconds)
        return out

    def _fired(self, name: str) -> bool:
        if name not in self._running:
            return False
        self._running.discard(name)
        return True

    def transport_error(self) -> list[Action]:
        if self.terminated:
            return []
        return self._terminate([TransportError()])

    def timer_fired(self, name: str) -> list[Action]:
        raise NotImplementedError


class ClientInviteTransaction(Transaction):
    """§17.1.1, with RFC 6026: a 2xx moves to Accepted, where further 2xx reach the TU."""

    initial_state = State.CALLING

    def __init__(
        self, request: SipRequest, *, reliable: bool, timers: TimerConfig = TimerConfig()
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers)
        self._interval_a = timers.t1
        self._ack: SipRequest | None = None

    def start(self) -> list[Action]:
        out: list[Action] = [Transmit(self.request)]
        if not self.reliable:
            self._start(out, "A", self._interval_a)
        self._start(out, "B", 64 * self.timers.t1)
        return out

    def receive(self, response: SipResponse) -> list[Action]:
        out: list[Action] = []
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            self._cancel(out, "A", "B")
            if status < 200:
                self.state = State.PROCEEDING
                out.append(DeliverToTU(response))
            elif status < 300:
                self.state = State.ACCEPTED
                out.append(DeliverToTU(response))
                self._start(out, "M", 64 * self.timers.t1)
            else:
                self.state = State.COMPLETED
                self._ack = build_ack(self.request, response)
                out += [Transmit(self._ack), DeliverToTU(response)]
                seconds = 0 if self.reliable else self.timers.d
                return self._wait_or_terminate(out, "D", seconds)
        elif self.state is State.ACCEPTED and 200 <= status < 300:
            out.append(DeliverToTU(response))  # retransmitted or forked 2xx: the TU ACKs
        elif self.state is State.COMPLETED and status >= 300 and self._ack is not None:
            out.append(Transmit(self._ack))  # our ACK was lost
        return out

    def timer_fired(self, name: str) -> list[Action]:
        if not self._fired(name):
            return []
        out: list[Action] = []
        if name == "A" and self.state is State.CALLING:
            self._interval_a *= 2
            out.append(Transmit(self.request))
            self._start(out, "A", self._interval_a)
        elif name == "B" and self.state is State.CALLING:
            out.append(Timeout("B"))
            return self._terminate(out)
        elif (name == "D" and self.state is State.COMPLETED) or (
            name == "M" and self.state is State.ACCEPTED
        ):
            return self._terminate(out)
        return out


class ClientNonInviteTransaction(Transaction):
    """§17.1.2."""

    initial_state = State.TRYING

    def __init__(
        self, request: SipRequest, *, reliable: bool, timers: TimerConfig = TimerConfig()
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers)
        self._interval_e = timers.t1

    def start(self) -> list[Action]:
        out: list[Action] = [Transmit(self.request)]
        if not self.reliable:
            self._start(out, "E", self._interval_e)
        self._start(out, "F", 64 * self.timers.t1)
        return out

    def receive(self, response: SipResponse) -> list[Action]:
        out: list[Action] = []
        if self.state not in (State.TRYING, State.PROCEEDING):
            return out  # Completed absorbs retransmitted finals
        if response.status < 200:
            self.state = State.PROCEEDING
            out.append(DeliverToTU(response))
            return out
        self.state = State.COMPLETED
        self._cancel(out, "E", "F")
        out.append(DeliverToTU(response))
        return self._wait_or_terminate(out, "K", 0 if self.reliable else self.timers.t4)

    def timer_fired(self, name: str) -> list[Action]:
        if not self._fired(name):
            return []
        out: list[Action] = []
        if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            # Trying backs off up to T2; Proceeding retransmits every T2.
            if self.state is State.TRYING:
                self._interval_e = min(2 * self._interval_e, self.timers.t2)
            else:
                self._interval_e = self.timers.t2
            out.append(Transmit(self.request))
            self._start(out, "E", self._interval_e)
        elif name == "F" and self.state in (State.TRYING, State.PROCEEDING):
            out.append(Timeout("F"))
            return self._terminate(out)
        elif name == "K" and self.state is State.COMPLETED:
            return self._terminate(out)
        return out


class ServerInviteTransaction(Transaction):
    """§17.2.1, with RFC 6026: a 2xx moves to Accepted (Timer L) instead of terminating, so
    INVITE retransmissions are absorbed while the TU retransmits the 2xx itself.

    With ``send_trying`` (the default) ``start()`` answers 100 Trying at once, as a proxy must
    (§16.2); a UAS that will answer within 200 ms may turn it off.
    """

    initial_state = State.PROCEEDING

    def __init__(
        self,
        request: SipRequest,
        *,
        reliable: bool,
        timers: TimerConfig = TimerConfig(),
        send_trying: bool = True,
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers)
        self.send_trying = send_trying
        self.last_response: SipResponse | None = None
        self._interval_g = timers.t1

    def start(self) -> list[Action]:
        out: list[Action] = [DeliverToTU(self.request)]
        if self.send_trying:
            self.last_response = make_response(self.request, 100)
            out.append(Transmit(self.last_response))
        return out

    def receive(self, request: SipRequest) -> list[Action]:
        out: list[Action] = []
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._cancel(out, "G", "H")
                return self._wait_or_terminate(out, "I", 0 if self.reliable else self.timers.t4)
            if self.state is State.ACCEPTED:
                out.append(DeliverToTU(request))  # an ACK for our 2xx belongs to the TU
        elif self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response:
            out.append(Transmit(self.last_response))  # INVITE retransmission
        return out

    def send_response(self, response: SipResponse) -> list[Action]:
        out: list[Action] = []
        status = response.status
        if self.state is State.PROCEEDING:
            self.last_response = response
            out.append(Transmit(response))
            if 200 <= status < 300:
                self.state = State.ACCEPTED
                self._start(out, "L", 64 * self.timers.t1)
            elif status >= 300:
                self.state = State.COMPLETED
                if not self.reliable:
                    self._start(out, "G", self._interval_g)
                self._start(out, "H", 64 * self.timers.t1)
        elif self.state is State.ACCEPTED and 200 <= status < 300:
            out.append(Transmit(response))  # the TU's own 2xx retransmissions pass through
        return out

    def timer_fired(self, name: str) -> list[Action]:
        if not self._fired(name):
            return []
        out: list[Action] = []
        if name == "G" and self.state is State.COMPLETED and self.last_response:
            self._interval_g = min(2 * self._interval_g, self.timers.t2)
            out.append(Transmit(self.last_response))
            self._start(out, "G", self._interval_g)
        elif name == "H" and self.state is State.COMPLETED:
            out.append(Timeout("H"))  # the ACK never came
            return self._terminate(out)
        elif (name == "I" and self.state is State.CONFIRMED) or (
            name == "L" and self.state is State.ACCEPTED
        ):
            return self._terminate(out)
        return out


class ServerNonInviteTransaction(Transaction):
    """§17.2.2."""

    initial_state = State.TRYING

    def __init__(
        self, request: SipRequest, *, reliable: bool, timers: TimerConfig = TimerConfig()
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers)
        self.last_response: SipResponse | None = None

    def start(self) -> list[Action]:
        return [DeliverToTU(self.request)]

    def receive(self, request: SipRequest) -> list[Action]:
        # Retransmissions: absorbed in Trying, answered with the last response afterwards.
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response:
            return [Transmit(self.last_response)]
        return []

    def send_response(self, response: SipResponse) -> list[Action]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []  # §17.2.2: later responses from the TU are discarded
        self.last_response = response
        out: list[Action] = [Transmit(response)]
        if response.status < 200:
            self.state = State.PROCEEDING
            return out
        self.state = State.COMPLETED
        if not self.reliable:
            # Timer J keeps us 64*T1 for retransmissions, which need the response and the
            # Via it goes back by, not the rest of the request.
            self.request = self.request.essentials()
        return self._wait_or_terminate(out, "J", 0 if self.reliable else 64 * self.timers.t1)

    def timer_fired(self, name: str) -> list[Action]:
        if self._fired(name) and name == "J" and self.state is State.COMPLETED:
            return self._terminate([])
        return []


ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction
ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction


def client_key(message: SipRequest | SipResponse) -> tuple[str, str] | None:
    """§17.1.3: top Via branch plus CSeq method (so a CANCEL's responses are kept apart from
    its INVITE's). None without a branch: such a response matches nothing."""
    branch = message.top_via.branch
    if not branch:
        return None
    return (branch, message.cseq.method)


def server_key(request: SipRequest, *, method: str | None = None) -> Hashable:
    """§17.2.3. ``method`` overrides the request's (CANCEL looks for its INVITE).

    With a magic-cookie branch: branch, sent-by and method, an ACK counting as INVITE.
    Otherwise (RFC 2543 peers): Request-URI, From tag, Call-ID, CSeq number, top Via and method.
    The To tag is left out of the fallback key because an ACK carries the tag of our response
    while its INVITE had none.
    """
    via = request.top_via
    wanted = method or request.method
    if wanted == "ACK":
        wanted = "INVITE"
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, via.host.lower(), via.port, wanted)
    return (
        "2543",
        str(request.uri),
        request.from_.tag,
        request.call_id,
        request.cseq.seq,
        str(via),
        wanted,
    )


class TransactionLayer:
    """Table of live transactions.

    Every method returns the transaction concerned (or None) with the actions to carry out;
    a transaction whose actions end with ``Terminated`` has already been removed from the table.
    """

    def __init__(self, timers: TimerConfig = TimerConfig(), *, send_trying: bool = True) -> None:
        self.timers = timers
        self.send_trying = send_trying
        self.clients: dict[Hashable, ClientTransaction] = {}
        self.servers: dict[Hashable, ServerTransaction] = {}

    def __len__(self) -> int:
        return len(self.clients) + len(self.servers)

    def _done(self, tx: Transaction, actions: list[Action]) -> list[Action]:
        if tx.terminated:
            table: dict[Hashable, ClientTransaction] | dict[Hashable, ServerTransaction]
            table = self.servers if isinstance(tx, ServerTransaction) else self.clients
            if table.get(tx.key) is tx:
                del table[tx.key]
        return actions

    def send_request(
        self, request: SipRequest, *, reliable: bool
    ) -> tuple[ClientTransaction, list[Action]]:
        """Start a client transaction. The request's top Via must carry a fresh RFC 3261
        branch (``helpers.new_branch()``); ACK for a 2xx is not a transaction (send it
        directly)."""
        if request.method == "ACK":
            raise ValueError("ACK is sent without a client transaction")
        key = client_key(request)
        if key is None or not key[0].startswith(MAGIC_COOKIE):
            raise ValueError("request needs a top Via branch starting with z9hG4bK")
        if key in self.clients:
            raise ValueError(f"a client transaction with branch {key[0]} already exists")
        tx: ClientTransaction
        if request.method == "INVITE":
            tx = ClientInviteTransaction(request, reliable=reliable, timers=self.timers)
        else:
            tx = ClientNonInviteTransaction(request, reliable=reliable, timers=self.timers)
        tx.key = key
        self.clients[key] = tx
        return tx, self._done(tx, tx.start())

    def receive_response(
        self, response: SipResponse
    ) -> tuple[ClientTransaction | None, list[Action]]:
        """Unmatched responses go straight to the TU (a proxy forwards stray 2xx, §16.7)."""
        key = client_key(response)
        tx = self.clients.get(key) if key is not None else None
        if tx is None:
            return None, [DeliverToTU(response)]
        return tx, self._done(tx, tx.receive(response))

    def receive_request(
        self, request: SipRequest, *, reliable: bool
    ) -> tuple[ServerTransaction | None, list[Action]]:
        """Retransmissions and ACKs for non-2xx are handled by their transaction; an ACK
        matching nothing (it acknowledges a 2xx) goes straight to the TU."""
        key = server_key(request)
        tx = self.servers.get(key)
        if tx is not None:
            return tx, self._done(tx, tx.receive(request))
        if request.method == "ACK":
            return None, [DeliverToTU(request)]
        if request.method == "INVITE":
            tx = ServerInviteTransaction(
                request, reliable=reliable, timers=self.timers, send_trying=self.send_trying
            )
        else:
            tx = ServerNonInviteTransaction(request, reliable=reliable, timers=self.timers)
        tx.key = key
        self.servers[key] = tx
        return tx, self._done(tx, tx.start())

    def send_response(self, tx: ServerTransaction, response: SipResponse) -> list[Action]:
        return self._done(tx, tx.send_response(response))

    def timer_fired(self, tx: Transaction, name: str) -> list[Action]:
        return self._done(tx, tx.timer_fired(name))

    def transport_error(self, tx: Transaction) -> list[Action]:
        return self._done(tx, tx.transport_error())

    def invite_for_cancel(self, cancel: SipRequest) -> ServerInviteTransaction | None:
        """The INVITE server transaction a CANCEL targets (§9.2), if still known."""
        tx = self.servers.get(server_key(cancel, method="INVITE"))
        return tx if isinstance(tx, ServerInviteTransaction) else None
