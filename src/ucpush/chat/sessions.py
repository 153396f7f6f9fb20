"""The last-active-session rule (SPEC §4), sans I/O.

With a desktop and a mobile session of one user, the mobile is pushed only when it was the
last session the user interacted with, or every other session has been inactive for
``inactive_after`` seconds (300 by default), or signed out; and always while the user is in
an active call. Neither Prosody nor ejabberd applies this rule, so the app server does, from
the presence of every session it receives as an XEP-0356 privileged entity.

Interaction is read from presence: an available presence with no ``<show/>`` (or ``chat``)
and no XEP-0319 ``<idle/>`` means the user is at that session now; ``away``/``xa``/``dnd``
keep the previous interaction time; ``<idle since='T'/>`` means the last interaction was T.
The mobile's session is the one whose resource is its push node (the app binds its XMPP
resource to its sign-in device id); a push for a device whose resource is unknown is
decided on the other sessions alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ucpush.chat.protocol import PresenceUpdate

_INTERACTIVE_SHOWS = (None, "chat")


@dataclass(slots=True)
class _Session:
    last_interaction: float  # epoch seconds; 0.0 = never seen active


@dataclass(slots=True)
class LastActiveSessions:
    inactive_after: float = 300.0
    _users: dict[str, dict[str, _Session]] = field(default_factory=dict)
    _in_call: set[str] = field(default_factory=set)

    def presence(self, update: PresenceUpdate, now: float) -> None:
        sessions = self._users.setdefault(update.bare_jid, {})
        if not update.available:
            sessions.pop(update.resource, None)
            if not sessions:
                del self._users[update.bare_jid]
            return
        session = sessions.setdefault(update.resource, _Session(0.0))
        if update.idle_since is not None:
            session.last_interaction = _epoch(update.idle_since)
        elif update.show in _INTERACTIVE_SHOWS:
            session.last_interaction = now

    def set_in_call(self, user: str, in_call: bool) -> None:
        """``user``: a bare JID or a sign-in user id (both are checked by ``should_push``)."""
        key = user.lower()
        if in_call:
            self._in_call.add(key)
        else:
            self._in_call.discard(key)

    def online(self, bare_jid: str) -> dict[str, float]:
        """resource → last interaction of the user's available sessions."""
        return {r: s.last_interaction for r, s in self._users.get(bare_jid.lower(), {}).items()}

    def should_push(self, bare_jid: str, resource: str, now: float, user_id: str = "") -> bool:
        """Whether the session ``resource`` of ``bare_jid`` (the mobile) gets a message push."""
        if bare_jid.lower() in self._in_call or (user_id and user_id.lower() in self._in_call):
            return True
        sessions = self._users.get(bare_jid.lower(), {})
        others = [s.last_interaction for r, s in sessions.items() if r != resource]
        if not others:
            return True  # no other session: signed out everywhere else
        latest_other = max(others)
        if now - latest_other >= self.inactive_after:
            return True
        own = sessions.get(resource)
        return own is not None and own.last_interaction >= latest_other

    def forget(self) -> None:
        """Drop every session (the component lost its stream: presence will be re-sent)."""
        self._users.clear()


def _epoch(moment: datetime) -> float:
    return moment.timestamp()
