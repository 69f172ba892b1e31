"""TLS and mutual TLS on a real uvicorn server (loopback), with certificates from genba.serve.certs."""

from __future__ import annotations

import httpx
import pytest

from genba.client import PolicyClient
from genba.serve.certs import issue_cert, make_ca
from genba.serve.server import PolicyServer, build_app, tls_options
from tests.serve.conftest import fake_backend, loopback_server

STATE = [0.1, 0.0, 0.0, 0.2, 0.0]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    make_ca(d)
    issue_cert(d, "server", "urn:genba:policy-server")  # SAN: localhost, 127.0.0.1
    issue_cert(d, "client", "urn:genba:policy-client")
    issue_cert(d, "rogue", "urn:genba:policy-client:rogue", self_signed=True)
    return d


def serve(tokens, **tls):
    """A uvicorn server with ``tls`` on a free loopback port; yields its https URL."""
    with loopback_server(build_app(PolicyServer(fake_backend(), tokens)), log_level="critical", **tls) as port:
        yield f"127.0.0.1:{port}"


@pytest.fixture
def tls_server(tokens, certs):
    yield from serve(tokens, **tls_options(certs / "server.cert.pem", certs / "server.key.pem"))


@pytest.fixture
def mtls_server(tokens, certs):
    yield from serve(tokens, **tls_options(certs / "server.cert.pem", certs / "server.key.pem",
                                           client_ca=certs / "ca.cert.pem"))


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_tls_client_trusting_the_ca_is_served(tls_server, tokens, certs, transport):
    with PolicyClient(f"https://{tls_server}", tokens.issue("acme"), transport=transport,
                      ca=str(certs / "ca.cert.pem")) as c:
        assert c.infer("toy", STATE)["actions"].shape == (4, 3)


def test_tls_client_not_trusting_the_ca_refuses_the_server(tls_server, tokens):
    with PolicyClient(f"https://{tls_server}", tokens.issue("acme")) as c:  # system trust store only
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            c.health()


def test_plain_http_to_the_tls_port_fails(tls_server, tokens):
    with PolicyClient(f"http://{tls_server}", tokens.issue("acme")) as c:
        with pytest.raises(httpx.TransportError):
            c.infer("toy", STATE)


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_mtls_client_with_a_ca_signed_certificate_is_served(mtls_server, tokens, certs, transport):
    with PolicyClient(f"https://{mtls_server}", tokens.issue("acme"), transport=transport,
                      ca=str(certs / "ca.cert.pem"), cert=str(certs / "client.cert.pem"),
                      key=str(certs / "client.key.pem")) as c:
        assert c.infer("toy", STATE)["actions"].shape == (4, 3)
        assert c.health()["status"] == "ok"


@pytest.mark.parametrize("client_cert", [None, "rogue"], ids=["no-certificate", "self-signed"])
def test_mtls_refuses_clients_without_a_trusted_certificate(mtls_server, tokens, certs, client_cert):
    extra = {} if client_cert is None else {"cert": str(certs / f"{client_cert}.cert.pem"),
                                            "key": str(certs / f"{client_cert}.key.pem")}
    # a valid API token does not help: the TLS handshake (or the first read under TLS 1.3) fails
    with PolicyClient(f"https://{mtls_server}", tokens.issue("acme"), ca=str(certs / "ca.cert.pem"), **extra) as c:
        with pytest.raises(httpx.TransportError):
            c.health()
    with pytest.raises(httpx.TransportError):  # plain HTTP is refused under mTLS as well
        httpx.get(f"http://{mtls_server}/v1/health", timeout=5)
