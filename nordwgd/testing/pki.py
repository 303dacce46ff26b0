"""A throw-away certificate authority for the fake NordVPN API.

``make_pki`` writes a test CA, a server certificate for the API host name and a second
certificate from the same CA for another host name (to prove that clients check the name,
not only the chain). Private keys are written 0600.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme

WRONG_HOST = "wrong.example.net"


@dataclass(frozen=True)
class Pki:
    ca_cert: Path  # PEM of the test CA (what clients trust)
    cert: Path  # leaf certificate for the API host
    key: Path
    wrong_cert: Path  # leaf certificate for WRONG_HOST, signed by the same CA
    wrong_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> Pki:
        """The file layout ``make_pki`` writes, for a directory it wrote earlier."""
        return cls(
            ca_cert=directory / "ca.pem",
            cert=directory / "server.pem",
            key=directory / "server.key",
            wrong_cert=directory / "wrong.pem",
            wrong_key=directory / "wrong.key",
        )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def make_pki(directory: Path, host: str = "api.nordvpn.com") -> Pki:
    """Create the CA and both leaf certificates under ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki.in_directory(directory)
    ca = trustme.CA(organization_name="nordwgd test CA")
    leaf = ca.issue_cert(host)
    wrong = ca.issue_cert(WRONG_HOST)
    _write(pki.ca_cert, ca.cert_pem.bytes(), 0o644)
    _write(pki.cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems), 0o644)
    _write(pki.key, leaf.private_key_pem.bytes(), 0o600)
    _write(pki.wrong_cert, b"".join(blob.bytes() for blob in wrong.cert_chain_pems), 0o644)
    _write(pki.wrong_key, wrong.private_key_pem.bytes(), 0o600)
    return pki
