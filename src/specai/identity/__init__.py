"""Server identity: the TLS certificate, its fingerprint, and the client's pinned trust store."""
