"""Security settings: files only, one identity per process carried by the environment, generated secrets."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.common.certificates import generate_secrets
from services.common.security import (
    TLS_CA_VARIABLE,
    TOKEN_FILE_VARIABLE,
    SecuritySettings,
    configure,
    current,
    token_metadata,
)


def test_configure_hands_the_settings_to_the_environment_and_forgets_stale_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = generate_secrets(tmp_path / "secrets", ["localhost"])
    monkeypatch.delenv(TOKEN_FILE_VARIABLE, raising=False)  # restored, whatever configure does
    monkeypatch.setenv(TLS_CA_VARIABLE, "/stale/ca.pem")
    configure(SecuritySettings(token_file=secrets.settings.token_file))
    assert os.environ[TOKEN_FILE_VARIABLE] == str(secrets.settings.token_file)
    assert TLS_CA_VARIABLE not in os.environ
    assert current() == SecuritySettings(token_file=secrets.settings.token_file)
    configure(SecuritySettings())
    assert current() == SecuritySettings()


def test_generated_secrets_name_every_host_and_keep_the_secrets_private(tmp_path: Path) -> None:
    secrets = generate_secrets(tmp_path / "secrets", ["learner", "127.0.0.1"])
    settings = secrets.settings.check()
    assert settings.tls_cert is not None
    certificate = x509.load_pem_x509_certificate(settings.tls_cert.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["learner"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    for private in ("token", "service-key.pem"):
        assert (tmp_path / "secrets" / private).stat().st_mode & 0o777 == 0o600
    assert not list((tmp_path / "secrets").glob("ca-key*"))  # the CA's key is never written
    token = settings.token()
    assert token is not None
    assert len(token) >= 40
    assert token_metadata(settings) == (("authorization", f"Bearer {token}"),)
    shared = generate_secrets(tmp_path / "shared", ["learner"], shared=True)
    assert (shared.directory / "token").stat().st_mode & 0o777 == 0o644
    assert shared.settings.token() != token


def test_no_names_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one name"):
        generate_secrets(tmp_path / "secrets", [])
