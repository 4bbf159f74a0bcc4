"""Talking to Vault: the session (login, renew, read) and its renewal loop."""
