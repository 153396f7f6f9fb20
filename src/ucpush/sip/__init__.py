"""Sans-IO SIP core: message model and parser, stream framing, transaction state machines."""
