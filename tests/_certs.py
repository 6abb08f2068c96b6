"""Test certificates, made by the tests with ``openssl``: one CA and the certificates it signs.

``make_certificates(folder)`` returns the paths by file name:

    ca.pem                        the CA that signs everything below
    server.pem, server.key        a server certificate for ``localhost`` and ``127.0.0.1``
    other.pem, other.key          a server certificate for another host name only
                                  (``other.invalid``): refused by a client checking host names
    client.pem, client.key        a client certificate (``CN=client-cert``)
    stranger-ca.pem               a second CA that signed nothing here
    stranger.pem, stranger.key    a client certificate from that second CA

Keys are RSA (PKCS#8 PEM), which every server here reads: etcd, Consul and ZooKeeper's
PEM key store.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["make_certificates"]

_NEW_KEY = ["-newkey", "rsa:2048", "-nodes"]

_SIGNED = [
    # file stem, issuer, extended key usage, subject alternative names
    ("server", "ca", "serverAuth", "DNS:localhost,IP:127.0.0.1"),
    ("other", "ca", "serverAuth", "DNS:other.invalid"),
    ("client", "ca", "clientAuth", ""),
    ("stranger", "stranger-ca", "clientAuth", ""),
]


def make_certificates(folder: Path) -> dict[str, str]:
    """Make the CA, server and client certificates in ``folder``; their paths by file name."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    for ca in ("ca", "stranger-ca"):
        openssl(
            "req", "-x509", *_NEW_KEY, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
            "-subj", f"/CN=test-{ca}",
        )  # fmt: skip
    for name, issuer, usage, san in _SIGNED:
        lines = [f"extendedKeyUsage={usage}", "basicConstraints=CA:FALSE"]
        if san:
            lines.append(f"subjectAltName={san}")
        (folder / f"{name}.ext").write_text("\n".join(lines) + "\n")
        openssl(
            "req", *_NEW_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}-cert"
        )
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    names = ["ca.pem", "stranger-ca.pem"] + [
        f"{stem}.{ext}" for stem, *_ in _SIGNED for ext in ("pem", "key")
    ]
    return {name: str(folder / name) for name in names}
