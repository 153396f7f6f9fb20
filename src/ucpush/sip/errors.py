"""The one exception the SIP parser raises."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ucpush.sip.message import Headers


class SipParseError(ValueError):
    """Malformed SIP input. ``reason`` says what is wrong in words fit for a reason phrase.

    ``status`` is the response code a server should answer with (400, or 505 for an unknown
    SIP version). When the input was a request whose Via, From, To, Call-ID and CSeq headers
    were readable, ``method`` and ``headers`` carry them so a response can still be built
    (see ``ucpush.sip.helpers.error_response``); otherwise both are None and the input can only
    be dropped.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int = 400,
        method: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.method = method
        self.headers = headers
