"""A throw-away PKI for the local control plane, made with the ``openssl`` command.

Everything here is for loopback test clusters only: keys are unencrypted, certificates live ten
years, and the CA key sits next to its certificate so more client users can be minted later.

Layout of the directory handed to :func:`create_pki`::

    ca.crt / ca.key                 the single CA (signs serving and client certificates)
    apiserver.crt / apiserver.key   kube-apiserver serving certificate
    admin.crt / admin.key           client certificate CN=admin, O=system:masters
    sa.key / sa.pub                 RSA key pair that signs and verifies service-account tokens
    users/<name>.crt / .key         further client certificates (see :meth:`Pki.client_cert`)
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertKey", "Pki", "PkiError", "create_pki", "DEFAULT_SANS"]

#: Subject alternative names of the apiserver serving certificate.
DEFAULT_SANS: tuple[str, ...] = (
    "127.0.0.1",
    "localhost",
    "10.0.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

_DAYS = "3650"
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
_SAFE_FILE = re.compile(r"[^A-Za-z0-9._-]+")


class PkiError(RuntimeError):
    """openssl is missing or one of its commands failed."""


@dataclass(frozen=True)
class CertKey:
    """A PEM certificate and its unencrypted PEM private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """The files of one control plane's PKI (all paths absolute)."""

    dir: Path
    ca: CertKey
    apiserver: CertKey
    admin: CertKey
    sa_key: Path
    sa_pub: Path

    def client_cert(self, user: str, groups: Sequence[str] = ()) -> CertKey:
        """Issue a client certificate: CN=``user``, one O= per group (Kubernetes' x509 authn)."""
        if not user:
            raise ValueError("user must not be empty")
        users = self.dir / "users"
        users.mkdir(exist_ok=True)
        stem = _SAFE_FILE.sub("_", user)[:80] + "-" + secrets.token_hex(4)
        return _issue(
            self.ca,
            users / stem,
            subject=_subject(user, groups),
            extensions="basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n",
        )


def create_pki(directory: Path, *, sans: Sequence[str] = DEFAULT_SANS) -> Pki:
    """Create CA, apiserver serving cert, admin client cert and the service-account key pair."""
    if shutil.which("openssl") is None:
        raise PkiError("the 'openssl' command is needed to create the test PKI (apt-get install openssl)")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)

    ca = CertKey(directory / "ca.crt", directory / "ca.key")
    _openssl(
        "req", "-x509", *_EC_KEY, "-nodes", "-days", _DAYS,
        "-subj", "/CN=huskies-devcluster-ca",
        "-keyout", str(ca.key), "-out", str(ca.cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip

    alt_names = ",".join(_san(s) for s in sans)
    apiserver = _issue(
        ca,
        directory / "apiserver",
        subject="/CN=kube-apiserver",
        extensions="basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={alt_names}\n",
    )
    admin = _issue(
        ca,
        directory / "admin",
        subject=_subject("admin", ["system:masters"]),
        extensions="basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )

    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(sa_key))
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    for key in (ca.key, apiserver.key, admin.key, sa_key):
        key.chmod(0o600)
    return Pki(directory, ca, apiserver, admin, sa_key, sa_pub)


def _issue(ca: CertKey, stem: Path, *, subject: str, extensions: str) -> CertKey:
    out = CertKey(stem.with_name(stem.name + ".crt"), stem.with_name(stem.name + ".key"))
    csr = stem.with_name(stem.name + ".csr")
    ext = stem.with_name(stem.name + ".ext")
    ext.write_text(extensions)
    try:
        _openssl(
            "req", "-new", *_EC_KEY, "-nodes", "-subj", subject,
            "-keyout", str(out.key), "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-set_serial", "0x" + secrets.token_hex(16), "-days", _DAYS,
            "-extfile", str(ext), "-out", str(out.cert),
        )  # fmt: skip
    finally:
        csr.unlink(missing_ok=True)
        ext.unlink(missing_ok=True)
    out.key.chmod(0o600)
    return out


def _subject(cn: str, groups: Sequence[str]) -> str:
    parts = [f"/O={_escape(g)}" for g in groups if g]
    return "".join(parts) + f"/CN={_escape(cn)}"


def _escape(value: str) -> str:
    """Escape a value for openssl's ``-subj`` syntax (``/type=value``)."""
    if any(ord(c) < 0x20 for c in value):
        raise ValueError(f"control characters are not allowed in a certificate subject: {value!r}")
    return re.sub(r"([\\/+=,])", r"\\\1", value)


def _san(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"DNS:{value}"
    return f"IP:{value}"


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed (exit {proc.returncode}): {proc.stderr.strip()}")
