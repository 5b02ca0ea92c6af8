"""The mesh: members bound to their accounts, the registry, the message queue and peer tokens."""
