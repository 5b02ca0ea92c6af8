"""specai: serve AI agents over mandatory TLS and reach them from a pinned client."""

__version__ = "0.1.0"
__all__ = ["__version__"]
