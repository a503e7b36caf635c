"""certctl: a self-hosted TLS certificate lifecycle platform."""

__version__ = "0.1.0"
