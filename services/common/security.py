"""Authentication and encryption for every service: a shared token, mutual TLS, or both.

Both are optional and configured by file paths, never by secret values on a command
line: ``--token-file`` / ``APEXRL_TOKEN_FILE``, and ``--tls-cert``, ``--tls-key``,
``--tls-ca`` / ``APEXRL_TLS_CERT``, ``APEXRL_TLS_KEY``, ``APEXRL_TLS_CA``.

- **Token**: servers refuse every call without ``authorization: Bearer <token>``
  (UNAUTHENTICATED), except the gRPC health service, so probes work unauthenticated;
  clients send it on every call.
- **Mutual TLS**: servers present the certificate and demand a client certificate
  signed by the CA; clients verify the server against the same CA and present the same
  certificate. One certificate per deployment (with every service's name among its
  subject alternative names) serves as both, which ``apexrl secrets`` generates.

A process has one identity: a service's command calls :func:`configure` once (flags
override the environment), and every server and channel of that process, and of the
processes it starts, uses it. Tests and embedders may pass settings explicitly instead.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer

TOKEN_FILE_VARIABLE = "APEXRL_TOKEN_FILE"
TLS_CERT_VARIABLE = "APEXRL_TLS_CERT"
TLS_KEY_VARIABLE = "APEXRL_TLS_KEY"
TLS_CA_VARIABLE = "APEXRL_TLS_CA"
_VARIABLES = {
    "token_file": TOKEN_FILE_VARIABLE,
    "tls_cert": TLS_CERT_VARIABLE,
    "tls_key": TLS_KEY_VARIABLE,
    "tls_ca": TLS_CA_VARIABLE,
}
_AUTHORIZATION = "authorization"
_EXEMPT_PREFIX = "/grpc.health.v1.Health/"


class SecurityError(ValueError):
    """Security settings that cannot be used (a missing file, half a TLS setting, an empty token)."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SecurityError(f"cannot read the {what} {path}: {error.strerror or error}") from None


@dataclass(frozen=True)
class SecuritySettings:
    """Where a process's token and TLS files are; all None: no authentication, plaintext."""

    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    def __post_init__(self) -> None:
        tls = {"--tls-cert": self.tls_cert, "--tls-key": self.tls_key, "--tls-ca": self.tls_ca}
        missing = [flag for flag, path in tls.items() if path is None]
        if 0 < len(missing) < len(tls):
            raise SecurityError(
                f"mutual TLS needs --tls-cert, --tls-key and --tls-ca together; {', '.join(missing)} "
                f"missing (or {', '.join(_VARIABLES['tls_' + flag[6:]] for flag in missing)})"
            )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def token(self) -> str | None:
        """The shared token, read from its file (surrounding whitespace ignored)."""
        if self.token_file is None:
            return None
        token = _read(self.token_file, "token file").decode(errors="replace").strip()
        if not token or any(character.isspace() for character in token):
            raise SecurityError(f"the token file {self.token_file} must hold one token without spaces")
        return token

    def _tls_files(self) -> tuple[bytes, bytes, bytes]:
        assert self.tls_cert is not None
        assert self.tls_key is not None
        assert self.tls_ca is not None
        return (
            _read(self.tls_cert, "TLS certificate"),
            _read(self.tls_key, "TLS key"),
            _read(self.tls_ca, "TLS CA certificate"),
        )

    def check(self) -> SecuritySettings:
        """Reads every file once, so a bad path fails at start-up naming it; returns self."""
        self.token()
        if self.tls:
            self._tls_files()
        return self

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls:
            return None
        cert, key, ca = self._tls_files()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        cert, key, ca = self._tls_files()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def environment(self) -> dict[str, str]:
        """The variables that give a child process these settings (paths only, never secrets)."""
        return {
            variable: str(getattr(self, field))
            for field, variable in _VARIABLES.items()
            if getattr(self, field) is not None
        }

    def child_environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (this process's environment), with these settings in place of any it names."""
        environment = {
            key: value
            for key, value in (os.environ if base is None else base).items()
            if key not in _VARIABLES.values()
        }
        environment.update(self.environment())
        return environment

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] | None = None) -> SecuritySettings:
        source = os.environ if environment is None else environment
        values = {field: source.get(variable) for field, variable in _VARIABLES.items()}
        return cls(**{field: Path(value) if value else None for field, value in values.items()})


def configure(settings: SecuritySettings) -> None:
    """Makes ``settings`` this process's identity, and that of the processes it starts.

    The environment is where it is kept: a process's children inherit it.
    """
    settings.check()
    for variable in _VARIABLES.values():
        os.environ.pop(variable, None)
    os.environ.update(settings.environment())


def current() -> SecuritySettings:
    """This process's settings (:func:`configure`, or the environment it started with)."""
    return SecuritySettings.from_environment()


_REFUSAL = "missing or wrong token: send 'authorization: Bearer <token>' (see --token-file)"


def _refuse(_request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)


async def _refuse_async(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)


def _refusal_like(
    handler: grpc.RpcMethodHandler[Any, Any], behaviour: Callable[..., Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the refused method's kind that answers UNAUTHENTICATED before reading on."""
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour)
    return grpc.unary_unary_rpc_method_handler(behaviour)


def _authorized(metadata: Any, expected: bytes) -> bool:
    for key, value in metadata or ():
        if key == _AUTHORIZATION:
            given = value.encode() if isinstance(value, str) else bytes(value)
            return hmac.compare_digest(given, expected)
    return False


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without the token (UNAUTHENTICATED); the health service is exempt."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(_EXEMPT_PREFIX):
            return handler
        if _authorized(details.invocation_metadata, self._expected):
            return handler
        return _refusal_like(handler, _refuse)


class AsyncTokenInterceptor(grpc.aio.ServerInterceptor):
    """:class:`TokenInterceptor` for grpc.aio servers."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(details)
        if handler is None or details.method.startswith(_EXEMPT_PREFIX):
            return handler
        if _authorized(details.invocation_metadata, self._expected):
            return handler
        return _refusal_like(handler, _refuse_async)


def token_metadata(settings: SecuritySettings) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends with each call: the token, if any."""
    token = settings.token()
    return () if token is None else ((_AUTHORIZATION, f"Bearer {token}"),)


# Every service command takes the same four options (paths; the secrets stay in the files).
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        envvar=TOKEN_FILE_VARIABLE, help="File holding the shared token every call must carry (optional)."
    ),
]
TlsCertOption = Annotated[
    Path | None,
    typer.Option(envvar=TLS_CERT_VARIABLE, help="This service's TLS certificate (PEM); mutual TLS."),
]
TlsKeyOption = Annotated[
    Path | None, typer.Option(envvar=TLS_KEY_VARIABLE, help="The private key of --tls-cert (PEM).")
]
TlsCaOption = Annotated[
    Path | None,
    typer.Option(envvar=TLS_CA_VARIABLE, help="CA certificate (PEM) that signs every peer's certificate."),
]


def configure_from_flags(
    token_file: Path | None, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None
) -> SecuritySettings:
    """A command's four security options (flags, or their variables) as this process's identity."""
    settings = SecuritySettings(token_file, tls_cert, tls_key, tls_ca)
    configure(settings)
    return settings
