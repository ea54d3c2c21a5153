"""TLS for the frontends' listeners: the PEM files checked once, each failure naming its file.

gRPC's own loader only says "Failed to bind" for a bad certificate, and OpenSSL's says
"PEM lib" without saying which file; :func:`server_context` loads the certificate, the
key and the client CA one at a time so that the error names the file, the option it came
from and what to do. The CLI calls it before any port opens (exit code 3); the HTTP
frontend serves with the context it returns.
"""

from __future__ import annotations

import ssl

from dynamo_triton.errors import ConfigError

__all__ = ["TLS_OPTIONS", "load_context", "server_context"]

#: The command-line options the files come from, named in errors: certificate, key, client CA.
TLS_OPTIONS = ("--tls-cert", "--tls-key", "--tls-client-ca")


class _EncryptedKey(Exception):
    """OpenSSL asked for a passphrase: raised instead of prompting on a terminal nobody watches."""


def _no_passphrase() -> bytes:
    raise _EncryptedKey


def _readable(path: str, option: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot read the TLS file {path!r} ({option}): {exc.strerror or exc}",
            hint=f"give {option} the path of a PEM file the user running dyntriton can read",
        ) from exc


def server_context(
    cert: str, key: str, client_ca: str | None = None, *, options: tuple[str, str, str] = TLS_OPTIONS
) -> ssl.SSLContext:
    """A server-side context presenting ``cert``; with ``client_ca``, clients must present a certificate it signed.

    See :func:`load_context` for the parameters and errors.
    """
    return load_context(ssl.Purpose.CLIENT_AUTH, cert, key, client_ca, options=options)


def load_context(
    purpose: ssl.Purpose,
    cert: str,
    key: str,
    ca: str | None = None,
    *,
    options: tuple[str, str, str] = TLS_OPTIONS,
    peers: str = "clients",
    ca_name: str = "client CA",
) -> ssl.SSLContext:
    """A context for ``purpose`` presenting ``cert``; with ``ca``, the peer's certificate must chain to it.

    :param cert: PEM certificate (its chain may follow it in the file).
    :param key: the certificate's PEM private key, not encrypted (a server has nobody to type a passphrase).
    :param ca: PEM CA bundle the peers' certificates must chain to (mutual TLS), or None.
    :param options: the option names of the three files, for the error messages.
    :param peers: who presents the certificates ``ca`` signs, for the error messages.
    :param ca_name: what the messages call ``ca``.
    :raises ConfigError: a file is missing or unreadable, is not PEM, the key is encrypted or does not
        belong to the certificate; the message names the file and its option.
    """
    cert_option, key_option, ca_option = options
    for path, option in ((cert, cert_option), (key, key_option), (ca, ca_option)):
        if path:
            _readable(path, option)
    context = ssl.create_default_context(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:  # parses the certificates alone, so a failure below is the key's
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cafile=cert)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"the TLS certificate {cert!r} ({cert_option}) is not a PEM certificate ({exc.reason or exc})",
            hint="give the certificate in PEM ('-----BEGIN CERTIFICATE-----'); "
            "convert DER with: openssl x509 -inform der -in CERT -out cert.pem",
        ) from exc
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        raise ConfigError(
            f"the TLS key {key!r} ({key_option}) is encrypted with a passphrase",
            hint="give an unencrypted key (openssl pkey -in KEY -out plain.key) readable by this user only",
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"the TLS key {key!r} ({key_option}) does not belong to the certificate {cert!r} ({cert_option})",
                hint="give the key the certificate was made from "
                "(openssl x509 -noout -pubkey -in CERT and openssl pkey -pubout -in KEY print the same)",
            ) from exc
        raise ConfigError(
            f"the TLS key {key!r} ({key_option}) is not a PEM private key ({exc.reason or exc})",
            hint="give the private key in PEM ('-----BEGIN PRIVATE KEY-----')",
        ) from exc
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"the TLS {ca_name} {ca!r} ({ca_option}) holds no PEM certificate ({exc.reason or exc})",
                hint=f"give the PEM certificate of the CA that signs the {peers}' certificates",
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context
