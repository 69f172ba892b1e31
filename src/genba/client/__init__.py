"""genba.client: a torch-free client for the genba policy server (HTTP JSON or websocket msgpack)."""

from genba.client.client import PolicyClient, ServerError

__all__ = ["PolicyClient", "ServerError"]
