"""Call push (SPEC §2, RFC 8599 §5.6.2): wake sleeping devices for a held INVITE."""
