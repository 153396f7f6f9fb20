"""XEP-0357 publish requests and presence, sans I/O: parse an element tree, answer XML text.

The component hands every ``<iq type='set'><pubsub><publish/></pubsub></iq>`` it receives to
``parse_publish``; a malformed one raises ``StanzaError`` with the XMPP error to answer.
Replies are rendered as text (``result_reply`` / ``error_reply``) and sent raw on the
component stream, so their ``<error/>`` is in the stream's namespace
(``jabber:component:accept``): Prosody reads the error type only there (REFERENCE §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape, quoteattr

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUSH = "urn:xmpp:push:0"
NS_DATA = "jabber:x:data"
NS_IDLE = "urn:xmpp:idle:1"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
SUMMARY_FORM = "urn:xmpp:push:summary"
PUBLISH_OPTIONS_FORM = "http://jabber.org/protocol/pubsub#publish-options"

# Bounds on what one publish may carry; beyond them the request is malformed.
MAX_NODE_CHARS = 256
MAX_FIELD_CHARS = 3072


class ErrorType(StrEnum):
    # The server keeps the registration and tries again later (transient trouble).
    WAIT = "wait"
    # The registration is wrong or dead: the server disables it.
    CANCEL = "cancel"
    AUTH = "auth"
    MODIFY = "modify"


class StanzaError(Exception):
    """An XMPP error to answer with (RFC 6120 §8.3)."""

    def __init__(self, type_: ErrorType, condition: str, text: str = "") -> None:
        super().__init__(f"{type_.value}/{condition}: {text}" if text else condition)
        self.type = type_
        self.condition = condition
        self.text = text


@dataclass(frozen=True, slots=True)
class Publish:
    """One push the chat server asks for. ``message_count`` / ``sender`` / ``body`` come from
    the optional summary form (None when absent); ``options`` is the publish-options form."""

    node: str
    secret: str | None
    message_count: int | None = None
    pending_subscriptions: int | None = None
    sender: str | None = None
    body: str | None = None

    @property
    def has_message(self) -> bool:
        """The push is about a message (not only presence or a subscription request)."""
        return bool(self.message_count) or self.sender is not None or self.body is not None


def _local(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _child(parent: Element, ns: str, name: str) -> Element | None:
    for child in parent:
        if _local(child.tag) == (ns, name):
            return child
    return None


def _form_fields(form: Element) -> dict[str, str]:
    """var → first value of a data form; FORM_TYPE included."""
    fields: dict[str, str] = {}
    for field in form:
        if _local(field.tag) != (NS_DATA, "field"):
            continue
        var = field.get("var")
        if not var:
            raise StanzaError(ErrorType.MODIFY, "bad-request", "data form field without var")
        value = _child(field, NS_DATA, "value")
        text = (value.text or "") if value is not None else ""
        if len(text) > MAX_FIELD_CHARS:
            raise StanzaError(ErrorType.MODIFY, "bad-request", f"form field {var} too long")
        fields.setdefault(var, text)
    return fields


def _count(fields: dict[str, str], var: str) -> int | None:
    raw = fields.get(var)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise StanzaError(ErrorType.MODIFY, "bad-request", f"{var} is not a number") from None
    if value < 0:
        raise StanzaError(ErrorType.MODIFY, "bad-request", f"{var} is negative")
    return value


def parse_publish(iq: Element) -> Publish:
    """The publish in ``iq`` (an ``<iq type='set'>`` holding ``<pubsub/>``)."""
    pubsub = _child(iq, NS_PUBSUB, "pubsub")
    if pubsub is None:
        raise StanzaError(ErrorType.MODIFY, "bad-request", "no pubsub element")
    publish = _child(pubsub, NS_PUBSUB, "publish")
    if publish is None:
        raise StanzaError(ErrorType.CANCEL, "feature-not-implemented", "only publish is supported")
    node = publish.get("node") or ""
    if not node:
        # XEP-0060 §7.1.3.3: publishing without a node (instant nodes) is not offered.
        raise StanzaError(ErrorType.MODIFY, "bad-request", "publish without a node")
    if len(node) > MAX_NODE_CHARS:
        raise StanzaError(ErrorType.MODIFY, "bad-request", "node too long")
    item = _child(publish, NS_PUBSUB, "item")
    notification = _child(item, NS_PUSH, "notification") if item is not None else None
    if notification is None:
        raise StanzaError(ErrorType.MODIFY, "bad-request", "publish without a push notification")
    summary: dict[str, str] = {}
    form = _child(notification, NS_DATA, "x")
    if form is not None:
        summary = _form_fields(form)
        form_type = summary.get("FORM_TYPE")
        if form_type is not None and form_type != SUMMARY_FORM:
            raise StanzaError(ErrorType.MODIFY, "bad-request", "unknown notification form")
    secret: str | None = None
    options = _child(pubsub, NS_PUBSUB, "publish-options")
    if options is not None:
        options_form = _child(options, NS_DATA, "x")
        if options_form is None:
            raise StanzaError(ErrorType.MODIFY, "bad-request", "publish-options without a form")
        option_fields = _form_fields(options_form)
        if option_fields.get("FORM_TYPE", PUBLISH_OPTIONS_FORM) != PUBLISH_OPTIONS_FORM:
            raise StanzaError(ErrorType.MODIFY, "bad-request", "unknown publish-options form")
        secret = option_fields.get("secret")
    return Publish(
        node=node,
        secret=secret,
        message_count=_count(summary, "message-count"),
        pending_subscriptions=_count(summary, "pending-subscription-count"),
        sender=summary.get("last-message-sender") or None,
        body=summary.get("last-message-body") or None,
    )


def _attrs(stanza_id: str | None, from_: str, to: str) -> str:
    out = f"from={quoteattr(from_)} to={quoteattr(to)}"
    if stanza_id is not None:
        out += f" id={quoteattr(stanza_id)}"
    return out


def result_reply(stanza_id: str | None, from_: str, to: str) -> str:
    return f"<iq type='result' {_attrs(stanza_id, from_, to)}/>"


def error_reply(stanza_id: str | None, from_: str, to: str, error: StanzaError) -> str:
    """An IQ error; unprefixed, so ``<error/>`` takes the stream's default namespace."""
    text = f"<text xmlns='{NS_STANZAS}'>{escape(error.text)}</text>" if error.text else ""
    return (
        f"<iq type='error' {_attrs(stanza_id, from_, to)}>"
        f"<error type='{error.type.value}'><{error.condition} xmlns='{NS_STANZAS}'/>{text}"
        "</error></iq>"
    )


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """A user's session changed presence. ``idle_since`` from XEP-0319 ``<idle since/>``."""

    bare_jid: str
    resource: str
    available: bool
    show: str | None = None
    idle_since: datetime | None = None


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_presence(presence: Element) -> PresenceUpdate | None:
    """A session's broadcast presence, or None for anything else (bare or domain senders,
    subscriptions, probes, errors)."""
    sender = presence.get("from") or ""
    bare, slash, resource = sender.partition("/")
    if not slash or not resource or "@" not in bare:
        return None
    type_ = presence.get("type")
    if type_ not in (None, "unavailable"):
        return None
    show_el = next((c for c in presence if _local(c.tag)[1] == "show"), None)
    idle = next((c for c in presence if _local(c.tag) == (NS_IDLE, "idle")), None)
    return PresenceUpdate(
        bare_jid=bare.lower(),
        resource=resource,
        available=type_ is None,
        show=(show_el.text or "").strip() or None if show_el is not None else None,
        idle_since=_parse_time(idle.get("since") or "") if idle is not None else None,
    )
