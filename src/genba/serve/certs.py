"""Certificates for TLS/mTLS (the policy server) and OPC UA (machine and bridge).

`genba certs ca DIR` makes a certificate authority; `genba certs issue DIR NAME
--uri URN` a key and a certificate signed by it. OPC UA requires the
application URI in the certificate's subjectAltName (asyncua refuses the
session otherwise) and key usages for signing and encryption; TLS wants the
host names (DNS/IP) in the same extension, so one certificate serves both.
Files: ``NAME.key.pem`` (PKCS#8, mode 0600), ``NAME.cert.pem`` and ``NAME.cert.der``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertFiles:
    key: Path
    cert_pem: Path
    cert_der: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "genba"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, name: str, key, cert: x509.Certificate) -> CertFiles:
    directory.mkdir(parents=True, exist_ok=True)
    files = CertFiles(directory / f"{name}.key.pem", directory / f"{name}.cert.pem", directory / f"{name}.cert.der")
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    files.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.cert_der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return files


def make_ca(directory: str | os.PathLike, name: str = "ca", days: int = 3650) -> CertFiles:
    """A self-signed certificate authority (RSA 2048, SHA-256)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(f"genba {name}")).issuer_name(_name(f"genba {name}"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _write(Path(directory), name, key, cert)


def load_ca(directory: str | os.PathLike, name: str = "ca"):
    d = Path(directory)
    key = serialization.load_pem_private_key((d / f"{name}.key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((d / f"{name}.cert.pem").read_bytes())
    return key, cert


def issue_cert(directory: str | os.PathLike, name: str, app_uri: str, *, ca_dir: str | os.PathLike | None = None,
               hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 825,
               self_signed: bool = False) -> CertFiles:
    """A key and certificate for ``name`` whose subjectAltName holds ``app_uri`` and ``hosts``,
    signed by the CA in ``ca_dir`` (default: ``directory``), or self-signed (e.g. a rogue client)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    if self_signed:
        ca_key, issuer = key, _name(name)
    else:
        ca_key, ca_cert = load_ca(ca_dir or directory)
        issuer = ca_cert.subject
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(app_uri)]
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName(alt), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                            data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if not self_signed:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    return _write(Path(directory), name, key, builder.sign(ca_key, hashes.SHA256()))
