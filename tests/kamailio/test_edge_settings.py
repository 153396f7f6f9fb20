"""``[edge]`` settings: the shared secret is required when enabled and never printed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ucpush.config import EdgeSettings


def test_enabled_edge_needs_a_real_secret() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        EdgeSettings(enabled=True)
    with pytest.raises(ValidationError, match="at least 16 characters"):
        EdgeSettings.model_validate({"enabled": True, "secret": "short"})
    EdgeSettings()  # off: no secret needed


def test_secret_is_masked_in_dumps() -> None:
    secret = "s" * 24
    settings = EdgeSettings.model_validate({"enabled": True, "secret": secret})
    assert settings.secret.get_secret_value() == secret
    assert secret not in str(settings.model_dump(mode="json"))
    assert secret not in repr(settings)
