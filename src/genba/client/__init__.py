"""genba.client: re-exports the torch-free ``genba_client`` package (clients/genba-client/), for older imports."""

from genba_client import PolicyClient, ServerError

__all__ = ["PolicyClient", "ServerError"]
