"""genba.client: re-exports the torch-free ``genba_client`` package (clients/genba-client/), for older imports."""

try:
    from genba_client import PolicyClient, ServerError
except ModuleNotFoundError as e:  # a venv made before the client became its own package
    if e.name != "genba_client":
        raise
    raise ModuleNotFoundError("genba.client needs the genba-client package: `make install`, or "
                              "`pip install -e clients/genba-client` from the genba checkout") from None

__all__ = ["PolicyClient", "ServerError"]
