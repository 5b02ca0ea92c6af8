"""Accounts and what they may do: roles, the user directory, API keys, revocations and login throttling."""
