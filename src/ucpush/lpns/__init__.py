"""Local push service (LPNS, SPEC §6): the secure WebSocket iOS clients keep open on
provisioned Wi-Fi networks, so calls reach them without APNs. ``session`` is the sans-IO state
machine, ``protocol`` the message format, ``service`` the asyncio server with ``deliver``."""
