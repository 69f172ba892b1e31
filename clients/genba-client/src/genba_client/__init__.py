"""genba_client: a torch-free client for the genba policy server (HTTP JSON or websocket msgpack).

Installable on its own (``pip install clients/genba-client``); depends on numpy,
msgpack, httpx and websockets only, never on genba, torch, MuJoCo or Meta-World.
"""

from genba_client.client import PolicyClient, ServerError

__all__ = ["PolicyClient", "ServerError"]
