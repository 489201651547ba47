"""Throwaway secrets for a deployment: a CA, one certificate it signs for every service, a token.

``apexrl secrets DIR`` writes them (and ``apexrl run --secure`` for its own run):

- ``ca.pem``: the CA certificate every service trusts (its key is never written: the
  CA signs once and is gone, so nobody can mint another certificate it vouches for);
- ``service.pem`` and ``service-key.pem``: the certificate every service presents, as
  server and as client (mutual TLS), valid for each name given (DNS names or IP
  addresses: the names clients dial);
- ``token``: a random shared token (256 bits).

Files holding secrets are written readable by their owner only, in a folder only its
owner can enter; ``shared`` makes them readable by other users (the containers' user,
which reads compose's bind-mounted secrets), the folder still closed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.security import SecuritySettings

# The names the local run and docker-compose.yml's services (four-shards.yml's too) are dialled by.
DEFAULT_NAMES = (
    "localhost",
    "127.0.0.1",
    "learner",
    "replay",
    "replay-0",
    "replay-1",
    "replay-2",
    "replay-3",
    "actor",
    "evaluator",
)
_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Secrets:
    directory: Path

    @property
    def settings(self) -> SecuritySettings:
        return SecuritySettings(
            token_file=self.directory / "token",
            tls_cert=self.directory / "service.pem",
            tls_key=self.directory / "service-key.pem",
            tls_ca=self.directory / "ca.pem",
        )


def _write(path: Path, data: bytes, private: bool) -> None:
    mode = 0o600 if private else 0o644
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    path.chmod(mode)  # also when the file was there before


def _subject_names(names: Sequence[str]) -> list[x509.GeneralName]:
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    return alternatives


def generate_secrets(
    directory: Path, names: Sequence[str] = DEFAULT_NAMES, shared: bool = False, common_name: str = "apexrl"
) -> Secrets:
    """Writes a fresh CA certificate, a service certificate valid for ``names``, and a token."""
    if not names:
        raise ValueError("the service certificate needs at least one name (a host name or IP address)")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} throwaway CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    service_key = ec.generate_private_key(ec.SECP256R1())
    service = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} service")]))
        .issuer_name(ca_name)
        .public_key(service_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_subject_names(names)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(directory / "ca.pem", ca.public_bytes(pem), private=False)
    _write(directory / "service.pem", service.public_bytes(pem), private=False)
    key_bytes = service_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(directory / "service-key.pem", key_bytes, private=not shared)
    _write(directory / "token", (secrets.token_urlsafe(32) + "\n").encode(), private=not shared)
    return Secrets(directory)
