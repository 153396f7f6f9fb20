"""Push relay: onboarding, identity, /v1/push to APNs and FCM."""
