"""Payload encryption shared by the relay (format checks) and its callers (encryption)."""
