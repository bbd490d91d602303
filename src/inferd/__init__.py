"""inferd: a self-hosted, multi-tenant ML inference server."""

__version__ = "0.1.0"
