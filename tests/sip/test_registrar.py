"""Registrar: RFC 3261 §10.3, RFC 5626 §6.1, RFC 8599 push bindings, digest auth, refresh
pushes; the pure core with no database, then the service on a fake and on the SQL store."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucpush.sip.digest import MD5, SHA256, DigestAuth, compute_ha1, compute_response
from ucpush.sip.message import SipRequest, SipResponse, parse_message
from ucpush.sip.registrar import (
    BindingAdded,
    BindingEvent,
    BindingRefreshed,
    BindingRemoved,
    RefreshScheduler,
    RegisterOutcome,
    Registrar,
    RegistrarConfig,
    RegistrarService,
    Source,
    push_params_match,
    refresh_due_at,
    refresh_pushes_due,
)
from ucpush.sip.uri import parse_uri
from ucpush.store import open_store
from ucpush.store.repository import Binding, NotFound, SipUser

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
AOR = "sip:alice@example.org"
SOURCE = Source("TCP", "198.51.100.7", 40123)
PRID = "3f6a" * 16  # 64 hex digits, an APNs device token
PN = f"pn-provider=apns;pn-prid={PRID};pn-param=ABCD123456.org.example.app.voip"
PUSH_CONTACT = f"sip:alice@192.0.2.10:5060;transport=tcp;{PN}"
INSTANCE = "<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"
SECRET = b"s" * 32


def register(
    *contacts: str,
    call_id: str = "reg-1@192.0.2.10",
    cseq: int = 1,
    expires: int | None = None,
    to: str = AOR,
    uri: str = "sip:example.org",
    extra: tuple[tuple[str, str], ...] = (),
) -> SipRequest:
    lines = [
        f"REGISTER {uri} SIP/2.0",
        "Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK776asdhds",
        "Max-Forwards: 70",
        f"To: <{to}>",
        f"From: <{to}>;tag=456248",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "User-Agent: Linphone/5.1",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += [f"{name}: {value}" for name, value in extra]
    raw = "\r\n".join([*lines, "Content-Length: 0", "", ""]).encode()
    message = parse_message(raw)
    assert isinstance(message, SipRequest)
    return message


def contacts_of(response: SipResponse) -> list[str]:
    return response.headers.get_all("Contact")


def caps(response: SipResponse) -> list[str]:
    return response.headers.get_all("Feature-Caps")


class Node:
    """A registrar plus the bindings it stored: applies each outcome as the service would."""

    def __init__(self, config: RegistrarConfig | None = None, auth: DigestAuth | None = None):
        self.registrar = Registrar(config or RegistrarConfig(realm="example.org"), auth)
        self.bindings: dict[str, Binding] = {}

    def send(
        self, request: SipRequest, now: datetime = NOW, user: SipUser | None = None
    ) -> RegisterOutcome:
        outcome = self.registrar.handle(
            request, now=now, source=SOURCE, bindings=list(self.bindings.values()), user=user
        )
        for binding_id in outcome.remove:
            self.bindings.pop(binding_id, None)
        for binding in outcome.upsert:
            self.bindings[binding.id] = binding
        return outcome

    def only(self) -> Binding:
        assert len(self.bindings) == 1
        return next(iter(self.bindings.values()))


@pytest.fixture
def node() -> Node:
    return Node()


# RFC 3261 §10.3


def test_register_creates_binding(node: Node) -> None:
    request = register(
        "<sip:alice@192.0.2.10:5060;transport=tcp>",
        expires=600,
        extra=(("Path", "<sip:edge.example.org;lr>"), ("Supported", "path")),
    )
    outcome = node.send(request)
    response = outcome.response
    assert response.status == 200 and outcome.reason == "ok"
    assert response.to.tag
    assert response.headers.get("Date") == "Tue, 24 Nov 2026 12:00:00 GMT"
    assert contacts_of(response) == ["<sip:alice@192.0.2.10:5060;transport=tcp>;expires=600"]
    assert response.headers.get_all("Path") == ["<sip:edge.example.org;lr>"]
    assert caps(response) == []
    b = node.only()
    assert (b.aor, b.contact, b.call_id, b.cseq) == (
        AOR,
        "sip:alice@192.0.2.10:5060;transport=tcp",
        "reg-1@192.0.2.10",
        1,
    )
    assert b.expires_at == NOW + timedelta(seconds=600) and b.updated_at == NOW
    assert (b.source_transport, b.source_host, b.source_port) == ("TCP", "198.51.100.7", 40123)
    assert b.path == ("<sip:edge.example.org;lr>",)
    assert b.user_agent == "Linphone/5.1"
    assert not b.push_enabled and b.purr == ""
    assert outcome.events == [BindingAdded(b)]


def test_aor_is_canonical(node: Node) -> None:
    node.send(register("<sip:a@192.0.2.1>", to="sip:%61lice@EXAMPLE.org;user=phone"))
    assert node.only().aor == AOR


def test_expires_sources(node: Node) -> None:
    config = RegistrarConfig(min_expires=60, default_expires=1800, max_expires=3600)
    node = Node(config)
    response = node.send(
        register(
            "<sip:a@192.0.2.1>",  # no expires: the default
            "<sip:b@192.0.2.1>;expires=90",  # parameter beats header
            "<sip:c@192.0.2.1>;expires=99999999999",  # clamped to max
        )
    ).response
    assert sorted(contacts_of(response)) == [
        "<sip:a@192.0.2.1>;expires=1800",
        "<sip:b@192.0.2.1>;expires=90",
        "<sip:c@192.0.2.1>;expires=3600",
    ]
    response = Node(config).send(register("<sip:a@192.0.2.1>", expires=120)).response
    assert contacts_of(response) == ["<sip:a@192.0.2.1>;expires=120"]


def test_too_brief_is_423_with_min_expires(node: Node) -> None:
    outcome = node.send(register("<sip:a@192.0.2.1>", expires=59))
    assert outcome.response.status == 423
    assert outcome.response.reason == "Interval Too Brief"
    assert outcome.response.headers.get("Min-Expires") == "60"
    assert node.bindings == {} and outcome.upsert == []


def test_malformed_contact_expires_and_q(node: Node) -> None:
    assert node.send(register("<sip:a@192.0.2.1>;expires=soon")).response.status == 400
    assert node.send(register("<sip:a@192.0.2.1>;q=1.5")).response.status == 400
    assert node.send(register("<sip:a@192.0.2.1>;q=high")).response.status == 400
    assert node.bindings == {}


def test_multiple_contacts_and_q_values(node: Node) -> None:
    node.send(register("<sip:a@192.0.2.1>;q=0.7", "<sip:b@192.0.2.2>;q=0.1", expires=300))
    assert sorted(b.q for b in node.bindings.values()) == [0.1, 0.7]  # type: ignore[type-var]
    response = node.send(register(call_id="other", cseq=9)).response  # a query
    assert sorted(contacts_of(response)) == [
        "<sip:a@192.0.2.1>;expires=300;q=0.7",
        "<sip:b@192.0.2.2>;expires=300;q=0.1",
    ]


def test_query_changes_nothing(node: Node) -> None:
    node.send(register("<sip:a@192.0.2.1>", expires=300))
    outcome = node.send(register(cseq=2), now=NOW + timedelta(seconds=100))
    assert outcome.response.status == 200
    assert contacts_of(outcome.response) == ["<sip:a@192.0.2.1>;expires=200"]
    assert outcome.events == [] and not outcome.bindings_changed


def test_refresh_keeps_the_binding(node: Node) -> None:
    node.send(register("<sip:a@192.0.2.1>", expires=300))
    first = node.only()
    later = NOW + timedelta(seconds=100)
    outcome = node.send(register("<sip:a@192.0.2.1;ob>", cseq=2, expires=300), later)
    assert outcome.response.status == 200
    b = node.only()
    assert b.id == first.id and b.cseq == 2 and b.expires_at == later + timedelta(seconds=300)
    assert outcome.events == [BindingRefreshed(b, first)]


@pytest.mark.parametrize("cseq", [1, 0])
def test_out_of_order_cseq_is_500(node: Node, cseq: int) -> None:
    node.send(register("<sip:a@192.0.2.1>", cseq=1, expires=300))
    before = dict(node.bindings)
    outcome = node.send(register("<sip:a@192.0.2.1>", cseq=cseq, expires=0))
    assert outcome.response.status == 500
    assert outcome.reason == "CSeq out of order"
    assert node.bindings == before


def test_other_call_id_may_restart_cseq(node: Node) -> None:
    node.send(register("<sip:a@192.0.2.1>", cseq=50, expires=300))
    outcome = node.send(register("<sip:a@192.0.2.1>", call_id="rebooted", cseq=1, expires=300))
    assert outcome.response.status == 200
    assert node.only().call_id == "rebooted"


def test_unregister_one_contact(node: Node) -> None:
    node.send(register("<sip:a@192.0.2.1>", "<sip:b@192.0.2.2>", expires=300))
    b = next(x for x in node.bindings.values() if x.contact == "sip:b@192.0.2.2")
    outcome = node.send(register("<sip:b@192.0.2.2>;expires=0", cseq=2))
    assert contacts_of(outcome.response) == ["<sip:a@192.0.2.1>;expires=300"]
    assert outcome.events == [BindingRemoved(b, "unregistered")]
    assert outcome.remove == [b.id]


def test_unregister_unknown_contact_is_fine(node: Node) -> None:
    outcome = node.send(register("<sip:z@192.0.2.9>", expires=0))
    assert outcome.response.status == 200 and outcome.events == []


def test_wildcard_removes_all(node: Node) -> None:
    node.send(register("<sip:a@192.0.2.1>", "<sip:b@192.0.2.2>", expires=300))
    outcome = node.send(register("*", cseq=2, expires=0))
    assert outcome.response.status == 200
    assert contacts_of(outcome.response) == []
    assert node.bindings == {}
    assert {e.reason for e in outcome.events if isinstance(e, BindingRemoved)} == {"unregistered"}
    assert len(outcome.events) == 2


def test_wildcard_needs_expires_zero(node: Node) -> None:
    assert node.send(register("*")).response.status == 400
    assert node.send(register("*", expires=60)).response.status == 400


def test_wildcard_out_of_order(node: Node) -> None:
    node.send(register("<sip:a@192.0.2.1>", cseq=5, expires=300))
    assert node.send(register("*", cseq=5, expires=0)).response.status == 500
    assert len(node.bindings) == 1
    # Another Call-ID removes regardless of CSeq.
    assert node.send(register("*", call_id="x", cseq=1, expires=0)).response.status == 200
    assert node.bindings == {}


def test_expired_bindings_are_dropped(node: Node) -> None:
    node.send(register("<sip:a@192.0.2.1>", expires=60))
    old = node.only()
    outcome = node.send(register(cseq=2), NOW + timedelta(seconds=60))
    assert contacts_of(outcome.response) == []
    assert outcome.events == [BindingRemoved(old, "expired")]
    assert outcome.remove == [old.id]


def test_too_many_bindings() -> None:
    node = Node(RegistrarConfig(max_bindings=2))
    node.send(register("<sip:a@192.0.2.1>", "<sip:b@192.0.2.1>"))
    outcome = node.send(register("<sip:c@192.0.2.1>", cseq=2))
    assert outcome.response.status == 403 and "more than 2 bindings" in outcome.reason
    assert len(node.bindings) == 2
    # Replacing one in the same request is fine.
    request = register("<sip:a@192.0.2.1>;expires=0", "<sip:c@192.0.2.1>", cseq=3)
    assert node.send(request).response.status == 200


def test_date_is_gmt_whatever_the_zone_of_now(node: Node) -> None:
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))
    response = node.send(register("<sip:a@192.0.2.1>"), tokyo).response
    assert response.headers.get("Date") == "Tue, 24 Nov 2026 12:00:00 GMT"


def test_request_checks() -> None:
    node = Node(RegistrarConfig(domains=frozenset({"example.org"})))
    assert node.send(register("<sip:a@192.0.2.1>", uri="sip:other.org")).response.status == 404
    assert node.send(register(to="sip:alice@other.org", uri="sip:example.org")).response.status == (
        404
    )
    assert node.send(register(to="tel:+15551234")).response.status == 404
    outcome = node.send(register(extra=(("Require", "gruu, path"),)))
    assert outcome.response.status == 420
    assert outcome.response.headers.get("Unsupported") == "gruu"
    assert node.send(register(extra=(("Require", "path"),))).response.status == 200


def test_non_register_is_refused_loudly(node: Node) -> None:
    request = register()
    request.method = "OPTIONS"
    with pytest.raises(ValueError):
        node.send(request)


# RFC 5626 §6.1


def outbound(contact: str, reg_id: int | None = 1, instance: str = INSTANCE) -> str:
    out = f'<{contact}>;+sip.instance="{instance}"'
    return out if reg_id is None else f"{out};reg-id={reg_id}"


SUPPORTED_OUTBOUND = (("Supported", "path, outbound"),)
EDGE_VIA = ("Via", "SIP/2.0/TCP edge.example.org;branch=z9hG4bKedge")


def test_instance_and_reg_id_replace_the_binding(node: Node) -> None:
    outcome = node.send(
        register(outbound("sip:alice@192.0.2.10:5060"), expires=300, extra=SUPPORTED_OUTBOUND)
    )
    first = node.only()
    assert (first.instance_id, first.reg_id) == (INSTANCE, 1)
    assert outcome.response.headers.get("Require") == "outbound"
    assert contacts_of(outcome.response) == [
        f'<sip:alice@192.0.2.10:5060>;expires=300;+sip.instance="{INSTANCE}";reg-id=1'
    ]
    # New address after a network change (another Call-ID too): same binding, new contact.
    outcome = node.send(register(outbound("sip:alice@203.0.113.5:6000"), call_id="x", cseq=1))
    b = node.only()
    assert b.id == first.id and b.contact == "sip:alice@203.0.113.5:6000"
    assert outcome.events == [BindingRefreshed(b, first)]


def test_other_reg_id_is_another_flow(node: Node) -> None:
    # RFC 5626 §9.2: one REGISTER (and Call-ID) per flow.
    node.send(register(outbound("sip:alice@192.0.2.10", 1), call_id="flow-1"))
    node.send(register(outbound("sip:alice@[2001:db8::1]", 2), call_id="flow-2"))
    assert sorted(b.reg_id for b in node.bindings.values()) == [1, 2]  # type: ignore[type-var]


def test_reg_id_with_several_contacts_is_400(node: Node) -> None:
    request = register(outbound("sip:alice@192.0.2.10", 1), "<sip:alice@192.0.2.11>")
    outcome = node.send(request)
    assert outcome.response.status == 400 and "reg-id" in outcome.reason
    # Removing other contacts in the same request is fine.
    request = register(outbound("sip:alice@192.0.2.10", 1), "<sip:alice@192.0.2.11>;expires=0")
    assert node.send(request).response.status == 200


def test_outbound_behind_a_proxy_without_ob(node: Node) -> None:
    # Not our first hop and no Path with "ob": reg-id is ignored ...
    request = register(outbound("sip:alice@192.0.2.10"), extra=(EDGE_VIA,))
    outcome = node.send(request)
    assert outcome.response.status == 200 and node.only().reg_id is None
    assert outcome.response.headers.get("Require") is None
    # ... or refused with 439 when the UA requires outbound.
    request = register(outbound("sip:alice@192.0.2.10"), extra=(EDGE_VIA, *SUPPORTED_OUTBOUND))
    assert node.send(request).response.status == 439
    # An edge proxy that supports outbound marks its Path entry with "ob".
    path = ("Path", "<sip:token@edge.example.org;lr;ob>")
    request = register(
        outbound("sip:alice@192.0.2.10"), cseq=2, extra=(EDGE_VIA, path, *SUPPORTED_OUTBOUND)
    )
    outcome = node.send(request)
    assert outcome.response.status == 200
    assert outcome.response.headers.get("Require") == "outbound"
    assert outcome.response.headers.get_all("Path") == ["<sip:token@edge.example.org;lr;ob>"]


def test_instance_without_reg_id_replaces_by_instance(node: Node) -> None:
    node.send(register(outbound("sip:alice@192.0.2.10", None), expires=300))
    node.send(register(outbound("sip:alice@192.0.2.99", None), cseq=2, expires=300))
    b = node.only()
    assert b.contact == "sip:alice@192.0.2.99" and b.reg_id is None


def test_reg_id_without_instance_is_ignored(node: Node) -> None:
    node.send(register("<sip:alice@192.0.2.10>;reg-id=1", expires=300))
    b = node.only()
    assert b.reg_id is None and b.instance_id == ""


def test_instance_binding_is_not_matched_by_uri(node: Node) -> None:
    node.send(register(outbound("sip:alice@192.0.2.10"), expires=300))
    node.send(register("<sip:alice@192.0.2.10>", cseq=2, expires=300))
    assert len(node.bindings) == 2


# RFC 8599


def test_push_parameters_round_trip_exactly(node: Node) -> None:
    outcome = node.send(register(f"<{PUSH_CONTACT};pn-foo=Bar>", expires=600))
    b = node.only()
    assert b.contact == f"{PUSH_CONTACT};pn-foo=Bar"
    assert (b.pn_provider, b.pn_prid, b.pn_param) == (
        "apns",
        PRID,
        "ABCD123456.org.example.app.voip",
    )
    assert b.pn_extra == {"pn-foo": "Bar"}
    assert b.push_enabled and re.fullmatch(r"[0-9a-f]{32}", b.purr)
    assert contacts_of(outcome.response) == [f"<{PUSH_CONTACT};pn-foo=Bar>;expires=600"]
    assert caps(outcome.response) == [f'*;+sip.pns="apns";+sip.pnspurr="{b.purr}"']


def test_one_feature_caps_per_pns(node: Node) -> None:
    fcm = "sip:alice@192.0.2.11;pn-provider=fcm;pn-prid=tok;pn-param=my-project"
    response = node.send(register(f"<{PUSH_CONTACT}>", f"<{fcm}>", expires=600)).response
    values = caps(response)
    assert [re.search(r'pns="(\w+)"', v).group(1) for v in values] == ["apns", "fcm"]  # type: ignore[union-attr]
    purrs = {b.pn_provider: b.purr for b in node.bindings.values()}
    assert values[1] == f'*;+sip.pns="fcm";+sip.pnspurr="{purrs["fcm"]}"'
    assert purrs["apns"] != purrs["fcm"]


def test_purr_is_kept_while_the_target_stays(node: Node) -> None:
    node.send(register(f"<{PUSH_CONTACT}>", expires=600))
    purr = node.only().purr
    outcome = node.send(register(f"<{PUSH_CONTACT}>", cseq=2, expires=600))
    assert node.only().purr == purr
    assert caps(outcome.response) == [f'*;+sip.pns="apns";+sip.pnspurr="{purr}"']


def test_purr_rotates_and_the_old_one_stays_valid() -> None:
    node = Node(RegistrarConfig(purr_rotation=300))
    node.send(register(f"<{PUSH_CONTACT}>", expires=600))
    first = node.only()
    assert first.purr_issued_at == NOW and first.purr_previous == ""
    node.send(register(f"<{PUSH_CONTACT}>", cseq=2, expires=600), NOW + timedelta(seconds=299))
    assert node.only().purr == first.purr
    later = NOW + timedelta(seconds=300)
    outcome = node.send(register(f"<{PUSH_CONTACT}>", cseq=3, expires=600), later)
    b = node.only()
    assert b.id == first.id and b.purr != first.purr and b.purr_previous == first.purr
    assert b.purr_issued_at == later
    assert caps(outcome.response) == [f'*;+sip.pns="apns";+sip.pnspurr="{b.purr}"']
    node.send(register(f"<{PUSH_CONTACT}>", cseq=4, expires=600), later + timedelta(seconds=300))
    assert node.only().purr_previous == b.purr


def test_new_prid_means_new_purr() -> None:
    node = Node()
    contact = outbound(PUSH_CONTACT)
    node.send(register(contact, expires=600))
    first = node.only()
    rotated = contact.replace(PRID, "9" * 64)
    outcome = node.send(register(rotated, cseq=2, expires=600))
    b = node.only()
    assert b.id == first.id and b.pn_prid == "9" * 64 and b.purr != first.purr
    assert b.purr_previous == first.purr
    assert outcome.events == [BindingRefreshed(b, first)]


def test_purr_can_be_off() -> None:
    node = Node(RegistrarConfig(purr=False))
    response = node.send(register(f"<{PUSH_CONTACT}>", expires=600)).response
    assert caps(response) == ['*;+sip.pns="apns"']
    assert node.only().purr == ""


def test_register_without_prid_disables_push(node: Node) -> None:
    node.send(register(f"<{PUSH_CONTACT}>", expires=600))
    assert node.only().push_enabled
    plain = "sip:alice@192.0.2.10:5060;transport=tcp"
    outcome = node.send(register(f"<{plain}>", cseq=2, expires=600))
    b = node.only()
    assert not b.push_enabled and b.contact == plain and b.purr == ""
    assert caps(outcome.response) == []
    assert isinstance(outcome.events[0], BindingRefreshed)
    assert outcome.events[0].previous.push_enabled


def test_capability_query(node: Node) -> None:
    query = "sip:alice@192.0.2.10:5060;transport=tcp;pn-provider=apns"
    outcome = node.send(register(f"<{query}>", expires=600))
    assert outcome.response.status == 200
    assert caps(outcome.response) == ['*;+sip.pns="apns"']
    b = node.only()
    assert not b.push_enabled and b.pn_provider == "" and b.contact == query


def test_capability_query_for_every_pns() -> None:
    node = Node(RegistrarConfig(push_providers=frozenset({"fcm", "apns", "webpush"})))
    response = node.send(register("<sip:alice@192.0.2.10;pn-provider>", expires=600)).response
    assert caps(response) == ['*;+sip.pns="apns"', '*;+sip.pns="fcm"', '*;+sip.pns="webpush"']
    assert not node.only().push_enabled


def test_unsupported_pns_is_555(node: Node) -> None:
    outcome = node.send(
        register("<sip:alice@192.0.2.10;pn-provider=acme;pn-prid=x;pn-param=y>", expires=600)
    )
    assert outcome.response.status == 555
    assert outcome.response.reason == "Push Notification Service Not Supported"
    assert node.bindings == {}
    query = node.send(register("<sip:alice@192.0.2.10;pn-provider=acme>", expires=600))
    assert query.response.status == 555
    none = Node(RegistrarConfig(push_providers=frozenset()))
    assert none.send(register("<sip:a@192.0.2.10;pn-provider>")).response.status == 555


def test_unsupported_pns_without_555() -> None:
    node = Node(RegistrarConfig(reject_unsupported_pns=False))
    outcome = node.send(register("<sip:a@192.0.2.10;pn-provider=acme;pn-prid=x>", expires=600))
    assert outcome.response.status == 200 and caps(outcome.response) == []
    assert not node.only().push_enabled


def test_another_proxy_pushes(node: Node) -> None:
    # RFC 8599 §5.6.1.1: Feature-Caps with sip.pns from a proxy on the path: not ours.
    caps_in = (("Feature-Caps", '*;+sip.pns="apns"'),)
    outcome = node.send(register(f"<{PUSH_CONTACT}>", expires=60, extra=caps_in))
    assert outcome.response.status == 200  # no 423: push-length rules are not ours either
    assert caps(outcome.response) == []
    b = node.only()
    assert not b.push_enabled and b.contact == PUSH_CONTACT
    acme = node.send(register("<sip:a@192.0.2.10;pn-provider=acme;pn-prid=x>", extra=caps_in))
    assert acme.response.status == 200  # and no 555


def test_pnsreg_feature_caps_alone_is_not_a_pns_claim(node: Node) -> None:
    caps_in = (("Feature-Caps", '*;+sip.pnsreg="121"'),)
    node.send(register(f"<{PUSH_CONTACT}>", expires=600, extra=caps_in))
    assert node.only().push_enabled


def test_push_expiry_too_short_is_423(node: Node) -> None:
    outcome = node.send(register(f"<{PUSH_CONTACT}>", expires=239))
    assert outcome.response.status == 423
    assert outcome.response.headers.get("Min-Expires") == "240"
    assert node.bindings == {}
    assert node.send(register(f"<{PUSH_CONTACT}>", expires=240)).response.status == 200
    # Without push the ordinary minimum applies.
    plain = Node()
    assert plain.send(register("<sip:a@192.0.2.1>", expires=100)).response.status == 200


def test_pnsreg_allows_short_expiry(node: Node) -> None:
    outcome = node.send(register(f"<{PUSH_CONTACT}>;+sip.pnsreg", expires=100))
    assert outcome.response.status == 200
    b = node.only()
    assert b.pnsreg and b.push_enabled
    assert caps(outcome.response) == [
        f'*;+sip.pns="apns";+sip.pnsreg="180";+sip.pnspurr="{b.purr}"'
    ]
    assert contacts_of(outcome.response) == [f"<{PUSH_CONTACT}>;expires=100;+sip.pnsreg"]
    # Still not below the ordinary minimum.
    assert node.send(register(f"<{PUSH_CONTACT}>;+sip.pnsreg", expires=59)).response.status == 423


def test_apns_without_pn_param_is_not_pushed(node: Node) -> None:
    contact = f"sip:alice@192.0.2.10;pn-provider=apns;pn-prid={PRID}"
    outcome = node.send(register(f"<{contact}>", expires=600))
    assert outcome.response.status == 200 and caps(outcome.response) == []
    assert not node.only().push_enabled


def test_unregistering_a_push_binding_needs_no_push_checks(node: Node) -> None:
    node.send(register(f"<{PUSH_CONTACT}>", expires=600))
    outcome = node.send(register(f"<{PUSH_CONTACT}>;expires=0", cseq=2))
    assert outcome.response.status == 200 and node.bindings == {}
    removed = outcome.events[0]
    assert isinstance(removed, BindingRemoved) and removed.binding.pn_prid == PRID


def test_events_carry_what_call_push_matches_on(node: Node) -> None:
    outcome = node.send(register(outbound(PUSH_CONTACT), expires=600))
    (event,) = outcome.events
    assert isinstance(event, BindingAdded)
    b = event.binding
    assert (b.instance_id, b.pn_provider, b.pn_prid, b.pn_param, b.contact) == (
        INSTANCE,
        "apns",
        PRID,
        "ABCD123456.org.example.app.voip",
        PUSH_CONTACT,
    )


def test_push_params_match() -> None:
    node = Node()
    node.send(register(f"<{PUSH_CONTACT}>", expires=600))
    b = node.only()
    assert push_params_match(parse_uri(PUSH_CONTACT), b)
    # Case of the host and parameter order do not matter (RFC 3261 §19.1.4) ...
    reordered = f"sip:alice@192.0.2.10:5060;{PN};transport=TCP"
    assert push_params_match(parse_uri(reordered), b)
    # ... but every pn- parameter must be on both sides and equal (RFC 8599 §5.3).
    assert not push_params_match(parse_uri(PUSH_CONTACT.replace(PRID, "0" * 64)), b)
    no_param = "sip:alice@192.0.2.10:5060;transport=tcp;pn-provider=apns;pn-prid=" + PRID
    assert not push_params_match(parse_uri(no_param), b)
    assert not push_params_match(parse_uri(PUSH_CONTACT.replace("192.0.2.10", "192.0.2.11")), b)
    assert not push_params_match(parse_uri("tel:+15551234"), b)
    assert not push_params_match(parse_uri(PUSH_CONTACT), replace(b, contact="not a uri"))


def test_bad_config() -> None:
    with pytest.raises(ValueError):
        RegistrarConfig(min_expires=0)
    with pytest.raises(ValueError):
        RegistrarConfig(push_min_expires=120)
    with pytest.raises(ValueError):
        RegistrarConfig(max_expires=200, default_expires=200, push_min_expires=240)
    with pytest.raises(ValueError):
        RegistrarConfig(pnsreg_lead=120)
    with pytest.raises(ValueError):
        RegistrarConfig(purr_rotation=0)
    with pytest.raises(ValueError):
        RegistrarConfig(max_bindings=0)
    with pytest.raises(ValueError):
        Registrar(RegistrarConfig(realm="a"), DigestAuth(SECRET, "b"))


# Digest authentication


def alice(aor: str = AOR) -> SipUser:
    return SipUser(
        aor=aor,
        username="alice",
        realm="example.org",
        ha1_md5=compute_ha1("alice", "example.org", "wonderland", MD5),
        ha1_sha256=compute_ha1("alice", "example.org", "wonderland", SHA256),
        created_at=NOW,
    )


@pytest.fixture
def secure() -> Node:
    return Node(RegistrarConfig(realm="example.org"), DigestAuth(SECRET, "example.org"))


def authorization(
    challenge: str,
    *,
    password: str = "wonderland",
    username: str = "alice",
    uri: str = "sip:example.org",
    nc: str = "00000001",
) -> tuple[str, str]:
    fields = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
    algorithm = fields["algorithm"]
    ha1 = compute_ha1(username, fields["realm"], password, algorithm)
    response = compute_response(
        ha1,
        algorithm,
        method="REGISTER",
        uri=uri,
        nonce=fields["nonce"],
        qop="auth",
        nc=nc,
        cnonce="0a4f113b",
    )
    return (
        "Authorization",
        f'Digest username="{username}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, nc={nc}, '
        'cnonce="0a4f113b"',
    )


def test_challenge_then_register(secure: Node) -> None:
    first = secure.send(register("<sip:a@192.0.2.1>", expires=300))
    assert first.response.status == 401 and first.reason == "no credentials for our realm"
    challenges = first.response.headers.get_all("WWW-Authenticate")
    assert [re.search(r"algorithm=([\w-]+)", c).group(1) for c in challenges] == [  # type: ignore[union-attr]
        "SHA-256",
        "MD5",
    ]
    assert secure.bindings == {}
    for n, challenge in enumerate(challenges, start=2):
        request = register(
            "<sip:a@192.0.2.1>",
            cseq=n,
            expires=300,
            # Both challenges carry one nonce: a second answer must count up.
            extra=(authorization(challenge, nc=f"{n - 1:08x}"),),
        )
        outcome = secure.send(request, user=alice())
        assert outcome.response.status == 200, outcome.reason
    assert len(secure.bindings) == 1


def test_auth_user_key(secure: Node) -> None:
    challenge = secure.send(register()).response.headers.get_all("WWW-Authenticate")[0]
    request = register(extra=(authorization(challenge),))
    assert secure.registrar.auth_user_key(request) == ("alice", "example.org")
    assert secure.registrar.auth_user_key(register()) is None
    broken = register(extra=(("Authorization", "Digest nonsense"),))
    assert secure.registrar.auth_user_key(broken) is None
    assert Node().registrar.auth_user_key(request) is None


def test_wrong_password_is_challenged_again(secure: Node) -> None:
    challenge = secure.send(register()).response.headers.get_all("WWW-Authenticate")[0]
    request = register(extra=(authorization(challenge, password="guess"),))
    outcome = secure.send(request, user=alice())
    assert outcome.response.status == 401
    assert outcome.reason == "wrong response (bad password)"
    assert "stale" not in outcome.response.headers.get("WWW-Authenticate")  # type: ignore[operator]


def test_unknown_user_looks_like_a_wrong_password(secure: Node) -> None:
    challenge = secure.send(register()).response.headers.get_all("WWW-Authenticate")[0]
    request = register(extra=(authorization(challenge, username="mallory"),))
    outcome = secure.send(request, user=None)
    assert outcome.response.status == 401 and "unknown user" in outcome.reason


def test_user_of_another_aor_is_403(secure: Node) -> None:
    challenge = secure.send(register()).response.headers.get_all("WWW-Authenticate")[0]
    request = register(
        "<sip:a@192.0.2.1>", to="sip:bob@example.org", extra=(authorization(challenge),)
    )
    outcome = secure.send(request, user=alice())
    assert outcome.response.status == 403
    assert outcome.reason == "user 'alice' may not register sip:bob@example.org"
    assert secure.bindings == {}


def test_stale_nonce_asks_again_with_stale(secure: Node) -> None:
    challenge = secure.send(register()).response.headers.get_all("WWW-Authenticate")[0]
    request = register(extra=(authorization(challenge),))
    outcome = secure.send(request, NOW + timedelta(seconds=301), user=alice())
    assert outcome.response.status == 401
    assert all("stale=true" in v for v in outcome.response.headers.get_all("WWW-Authenticate"))


def test_malformed_credentials_are_400(secure: Node) -> None:
    request = register(extra=(("Authorization", 'Digest username="alice", realm="example.org"'),))
    outcome = secure.send(request, user=alice())
    assert outcome.response.status == 400
    assert outcome.response.reason.startswith("Malformed Authorization: missing")


def test_credentials_for_another_realm_are_ignored(secure: Node) -> None:
    challenge = secure.send(register()).response.headers.get_all("WWW-Authenticate")[0]
    ours = authorization(challenge)
    theirs = ("Authorization", ours[1].replace('realm="example.org"', 'realm="other.net"'))
    outcome = secure.send(register(extra=(theirs, ours)), user=alice())
    assert outcome.response.status == 200
    assert secure.send(register(cseq=2, extra=(theirs,)), user=None).response.status == 401


_AUTH_PIECES = st.sampled_from(
    [
        "Digest ",
        'username="alice"',
        'realm="example.org"',
        'nonce="',
        'uri="sip:example.org"',
        'response="00"',
        "qop=auth",
        "nc=00000001",
        'cnonce="c"',
        "algorithm=SHA-256",
        ",",
        '"',
        "=",
        " ",
        "\\",
        "x",
        "é",
    ]
)


@settings(max_examples=200)
@given(st.lists(_AUTH_PIECES, max_size=30).map("".join) | st.text(max_size=120))
def test_fuzz_authorization_gets_400_or_401(value: str) -> None:
    secure = Node(RegistrarConfig(realm="example.org"), DigestAuth(SECRET, "example.org"))
    request = register("<sip:a@192.0.2.1>")
    request.headers.add("Authorization", value)
    assert secure.registrar.auth_user_key(request) in (None, ("alice", "example.org"))
    outcome = secure.send(request, user=alice())
    assert outcome.response.status in (400, 401)
    assert secure.bindings == {}


# Refresh pushes (RFC 8599 §5.5)


def push_binding(expires: int = 600, *, pnsreg: bool = False, **changes: Any) -> Binding:
    node = Node()
    tag = ";+sip.pnsreg" if pnsreg else ""
    node.send(register(f"<{PUSH_CONTACT}>{tag}", expires=expires))
    return replace(node.only(), **changes)


def test_refresh_due_120_seconds_before_expiry() -> None:
    b = push_binding(600)
    assert refresh_due_at(b) == NOW + timedelta(seconds=480)
    assert refresh_pushes_due([b], NOW + timedelta(seconds=479)) == []
    assert refresh_pushes_due([b], NOW + timedelta(seconds=480)) == [b]
    assert refresh_pushes_due([b], NOW + timedelta(seconds=600)) == []  # expired: never


def test_no_refresh_for_plain_or_short_pnsreg_bindings() -> None:
    plain = push_binding(pn_prid="")
    assert refresh_due_at(plain) is None
    short = push_binding(100, pnsreg=True)
    assert refresh_due_at(short) is None
    assert refresh_pushes_due([short], NOW + timedelta(seconds=50)) == []
    long_pnsreg = push_binding(600, pnsreg=True)
    assert refresh_due_at(long_pnsreg) == NOW + timedelta(seconds=480)


def test_scheduler_pushes_once_per_expiry() -> None:
    scheduler = RefreshScheduler()
    b = push_binding(600)
    assert scheduler.next_wakeup([b]) == NOW + timedelta(seconds=480)
    at = NOW + timedelta(seconds=500)
    assert scheduler.due([b], at) == [b]
    assert scheduler.due([b], at + timedelta(seconds=10)) == []
    assert scheduler.next_wakeup([b]) is None
    # The device re-registered after the push: a new expiry, a new refresh later.
    refreshed = replace(b, expires_at=at + timedelta(seconds=600), updated_at=at)
    assert scheduler.next_wakeup([refreshed]) == at + timedelta(seconds=480)
    assert scheduler.due([refreshed], at + timedelta(seconds=100)) == []
    assert scheduler.due([refreshed], at + timedelta(seconds=480)) == [refreshed]


def test_scheduler_skips_devices_that_registered_in_time() -> None:
    scheduler = RefreshScheduler()
    b = push_binding(600)
    # Re-REGISTER at 400 s (before the push moment at 480 s) moves the expiry.
    refreshed = replace(
        b, expires_at=NOW + timedelta(seconds=1000), updated_at=NOW + timedelta(seconds=400)
    )
    assert scheduler.due([refreshed], NOW + timedelta(seconds=480)) == []


def test_scheduler_forgets_removed_bindings() -> None:
    scheduler = RefreshScheduler()
    b = push_binding(600)
    scheduler.due([b], NOW + timedelta(seconds=500))
    scheduler.due([], NOW + timedelta(seconds=501))
    assert scheduler.due([b], NOW + timedelta(seconds=502)) == [b]


# The service: storage through the repository


class FakeSipRepository:
    """In-memory ``SipRepository`` (the SQL one is exercised below and in tests/store)."""

    def __init__(self) -> None:
        self.users: dict[tuple[str, str], SipUser] = {}
        self.bindings: dict[str, Binding] = {}
        self.saves = 0

    async def add_user(self, user: SipUser) -> None:
        self.users[user.username, user.realm] = user

    async def get_user(self, username: str, realm: str) -> SipUser:
        try:
            return self.users[username, realm]
        except KeyError:
            raise NotFound("SIP user") from None

    async def list_bindings(self, aor: str | None = None) -> list[Binding]:
        await asyncio.sleep(0)  # let concurrent callers interleave if they can
        return [b for b in self.bindings.values() if aor in (None, b.aor)]

    async def save_bindings(self, aor: str, upsert: list[Binding], remove: list[str]) -> None:
        await asyncio.sleep(0)
        self.saves += 1
        for binding_id in remove:
            self.bindings.pop(binding_id, None)
        for b in upsert:
            self.bindings[b.id] = b

    async def remove_expired(self, now: datetime) -> list[Binding]:
        gone = [b for b in self.bindings.values() if b.expires_at <= now]
        for b in gone:
            del self.bindings[b.id]
        return gone


async def test_service_with_auth() -> None:
    repo = FakeSipRepository()
    await repo.add_user(alice())
    auth = DigestAuth(SECRET, "example.org")
    service = RegistrarService(Registrar(RegistrarConfig(realm="example.org"), auth), repo)
    first = await service.register(register(f"<{PUSH_CONTACT}>"), source=SOURCE, now=NOW)
    assert first.response.status == 401 and repo.saves == 0
    challenge = first.response.headers.get_all("WWW-Authenticate")[0]
    request = register(f"<{PUSH_CONTACT}>", cseq=2, extra=(authorization(challenge),))
    outcome = await service.register(request, source=SOURCE, now=NOW)
    assert outcome.response.status == 200, outcome.reason
    assert [b.pn_prid for b in repo.bindings.values()] == [PRID]


async def test_service_serialises_one_aor() -> None:
    repo = FakeSipRepository()
    service = RegistrarService(Registrar(RegistrarConfig()), repo)
    requests = [
        register(f"<sip:alice@192.0.2.{n}>", call_id=f"c{n}", expires=300) for n in range(10)
    ]
    outcomes = await asyncio.gather(
        *(service.register(r, source=SOURCE, now=NOW) for r in requests)
    )
    assert all(o.response.status == 200 for o in outcomes)
    assert len(repo.bindings) == 10
    # The last one saw every earlier binding.
    assert max(len(contacts_of(o.response)) for o in outcomes) == 10


async def test_service_bad_to_never_reaches_storage() -> None:
    repo = FakeSipRepository()
    service = RegistrarService(Registrar(RegistrarConfig()), repo)
    outcome = await service.register(register(to="tel:+15551234"), source=SOURCE, now=NOW)
    assert outcome.response.status == 404 and repo.saves == 0


async def test_service_sweep() -> None:
    repo = FakeSipRepository()
    service = RegistrarService(Registrar(RegistrarConfig()), repo)
    await service.register(register("<sip:a@192.0.2.1>", expires=60), source=SOURCE, now=NOW)
    assert await service.sweep(NOW + timedelta(seconds=59)) == []
    (removed,) = await service.sweep(NOW + timedelta(seconds=60))
    assert removed.reason == "expired" and removed.binding.contact == "sip:a@192.0.2.1"


async def test_service_on_sql_store_survives_restart(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sip.db'}"
    registrar = Registrar(RegistrarConfig())
    async with await open_store(url) as store:
        service = RegistrarService(registrar, store.sip)
        outcome = await service.register(
            register(outbound(PUSH_CONTACT), expires=600), source=SOURCE, now=NOW
        )
        assert outcome.response.status == 200
        added = outcome.events[0]
        assert isinstance(added, BindingAdded)
    async with await open_store(url) as store:
        assert await store.sip.list_bindings(AOR) == [added.binding]
        service = RegistrarService(registrar, store.sip)
        later = NOW + timedelta(seconds=100)
        events: list[BindingEvent] = (
            await service.register(
                register(outbound(PUSH_CONTACT), cseq=2, expires=600), source=SOURCE, now=later
            )
        ).events
        assert [type(e) for e in events] == [BindingRefreshed]
        (stored,) = await store.sip.list_bindings(AOR)
        assert stored.id == added.binding.id and stored.cseq == 2
        assert stored.purr == added.binding.purr
        stale = await service.register(
            register(outbound(PUSH_CONTACT), cseq=1, expires=600), source=SOURCE, now=later
        )
        assert stale.response.status == 500


# CLI (ucpush sip ...)


def test_cli_users_and_bindings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from ucpush.sip.cli import app

    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.delenv("UCPUSH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UCPUSH_STORE__URL", url)
    monkeypatch.setenv("COLUMNS", "300")  # rich tables must not wrap
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
        result = runner.invoke(app, list(args), input=stdin)
        return result.exit_code, result.output

    code, out = run(
        "user", "add", "alice", "--realm", "example.org", "--password-stdin", stdin="wonderland\n"
    )
    assert code == 0, out
    assert "sip:alice@example.org" in out
    code, out = run(
        "user",
        "add",
        "bob",
        "--realm",
        "example.org",
        "--password",
        "pw",
        "--display-name",
        "Bob B",
        "--aor",
        "sip:Bob@EXAMPLE.org",
    )
    assert code == 0, out
    assert run("user", "add", "alice", "--realm", "example.org", "--password", "x")[0] == 1
    assert run("user", "add", "carol", "--realm", "example.org")[0] == 1  # no password
    assert run("user", "add", "carol", "--realm", "r", "--password", "x", "--aor", "tel:1")[0] == 1
    code, out = run("user", "list")
    assert code == 0 and "alice" in out and "sip:Bob@example.org" in out and "Bob B" in out

    async def check() -> None:
        async with await open_store(url) as store:
            user = await store.sip.get_user("alice", "example.org")
            assert user.ha1_sha256 == compute_ha1("alice", "example.org", "wonderland", SHA256)
            assert "wonderland" not in repr(user)
            service = RegistrarService(Registrar(RegistrarConfig()), store.sip)
            now = datetime.now(UTC)  # the command shows time left from the real clock
            await service.register(register(f"<{PUSH_CONTACT}>"), source=SOURCE, now=now)

    asyncio.run(check())
    code, out = run("bindings", "list", "--aor", AOR)
    assert code == 0 and "alice" in out and "apns" in out
    assert re.search(r"\b3[56]\d\d s\b", out)
    code, out = run("bindings", "list", "--aor", "sip:bob@example.org")
    assert code == 0 and "apns" not in out
    assert run("bindings", "list", "--aor", "tel:+1")[0] == 1
    assert run("user", "delete", "alice", "--realm", "example.org")[0] == 0
    assert run("user", "delete", "alice", "--realm", "example.org")[0] == 1
    code, out = run("bindings", "list")
    assert code == 0 and "apns" not in out
