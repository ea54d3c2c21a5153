"""Test certificates made with the ``openssl`` command: a CA, a server certificate for 127.0.0.1, a client's.

For tests of TLS listeners (ours or a plugin's)::

    certs = make_certs(tmp_path)   # skip the test first when openssl_missing() says why
    server_context(certs.server_cert, certs.server_key, certs.ca)
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TestCerts", "make_certs", "openssl_missing"]


@dataclass(frozen=True)
class TestCerts:
    """PEM paths, every certificate signed by ``ca``; the server's names ``127.0.0.1`` and ``localhost``."""

    __test__ = False  # not a pytest test class despite its name

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def openssl_missing() -> str | None:
    """Why :func:`make_certs` cannot run here (no ``openssl`` command), or None."""
    return None if shutil.which("openssl") else "needs the openssl command to make test certificates"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(root: Path, *, days: int = 2) -> TestCerts:
    """Make a CA (``ca.pem``), ``server.pem``/``server.key`` and ``client.pem``/``client.key`` in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days), "-subj", "/CN=dyntriton-test-ca",
             "-keyout", str(root / "ca.key"), "-out", str(root / "ca.pem"))  # fmt: skip
    (root / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(root / f"{name}.key"), "-out", str(root / f"{name}.csr"))  # fmt: skip
        _openssl("x509", "-req", "-in", str(root / f"{name}.csr"), "-CA", str(root / "ca.pem"),
                 "-CAkey", str(root / "ca.key"), "-CAcreateserial", "-days", str(days),
                 "-extfile", str(root / "san.cnf"), "-out", str(root / f"{name}.pem"))  # fmt: skip
    return TestCerts(
        ca=str(root / "ca.pem"),
        server_cert=str(root / "server.pem"),
        server_key=str(root / "server.key"),
        client_cert=str(root / "client.pem"),
        client_key=str(root / "client.key"),
    )
