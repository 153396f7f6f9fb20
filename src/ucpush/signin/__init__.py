"""Client sign-in on the call node (SPEC §5, §6): OAuth for end users, the device registry,
client configuration. ``service`` holds the logic, ``api`` the HTTP API, ``cli`` the admin
commands."""
