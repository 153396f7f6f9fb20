"""The call node's connection to its push relay: onboarding state, machine account, status."""

from ucpush.cloud.connection import (
    CloudConnection,
    CloudError,
    CloudStatus,
    OnboardingStatus,
    ProxyAuth,
    ProxyConfig,
    Reachability,
)

__all__ = [
    "CloudConnection",
    "CloudError",
    "CloudStatus",
    "OnboardingStatus",
    "ProxyAuth",
    "ProxyConfig",
    "Reachability",
]
