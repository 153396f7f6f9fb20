"""The call node's admin web page and admin API (docs/admin.md)."""
