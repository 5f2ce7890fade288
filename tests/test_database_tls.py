"""`pipeline.py --check` says how TLS reaches the database and warns unless the server's identity
is verified (verify-full), against an embedded PostgreSQL serving a test CA's certificate."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import psycopg2
import pytest
from conftest import ROOT, Broker, apply_schema
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lmnh.local.embedded import PG_SYSTEM_USER, EmbeddedPostgres, MotoS3, free_port


def certificate(subject: str, issuer_key: ec.EllipticCurvePrivateKey | None = None,
                issuer: x509.Certificate | None = None,
                ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate (no issuer given) or a server certificate for localhost it signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=1)))
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        return builder.sign(key, hashes.SHA256()), key
    builder = builder.add_extension(x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]), False)
    assert issuer_key is not None
    return builder.sign(issuer_key, hashes.SHA256()), key


def pem(item: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(item, x509.Certificate):
        return item.public_bytes(serialization.Encoding.PEM)
    return item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())


# The pip package's server is built without TLS; Debian's is not (.ci/run installs it).
DEBIAN_PG = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql"),
                key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    """An embedded server with ssl=on; its port, the CA that signed it and another CA."""
    if not (DEBIAN_PG / "postgres").exists():
        pytest.skip(f"{DEBIAN_PG} is absent: the embedded server cannot serve TLS "
                    "(apt-get install postgresql)")
    folder = tmp_path_factory.mktemp("tls")
    ca, ca_key = certificate("LMNH test CA")
    server_cert, server_key = certificate("localhost", ca_key, ca)
    other_ca, _ = certificate("Someone else's CA")
    (folder / "ca.pem").write_bytes(pem(ca))
    (folder / "other-ca.pem").write_bytes(pem(other_ca))

    port = free_port()
    plain = EmbeddedPostgres(folder / "pg", port, bin_dir=DEBIAN_PG).start()
    for name, content in (("server.crt", pem(server_cert)), ("server.key", pem(server_key))):
        path = plain.cluster_dir / name
        path.write_bytes(content)
        path.chmod(0o600)
        if os.geteuid() == 0:
            account = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(path, account.pw_uid, account.pw_gid)
    plain.stop()
    server = EmbeddedPostgres(folder / "pg", port, {
        "ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"},
        bin_dir=DEBIAN_PG).start()
    server.create_database("lmnh_tls")
    apply_schema(server.url("lmnh_tls"))
    yield port, folder / "ca.pem", folder / "other-ca.pem"
    server.remove()


def check(port: int, broker: Broker, moto_s3: MotoS3, **database: str) -> str:
    """`pipeline.py --check`'s output: the database's lines (and the others', whatever they say)."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env |= moto_s3.env("no-such-bucket") | {
        "DATABASE_IP": "localhost", "DATABASE_PORT": str(port), "DATABASE_NAME": "lmnh_tls",
        "DATABASE_USERNAME": "postgres", "BOOTSTRAP_SERVERS": broker.bootstrap,
        "SECURITY_PROTOCOL": "PLAINTEXT", "TOPIC": "lmnh", "GROUP": "check"} | database
    result = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "--check"], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stdout + result.stderr
    return "\n".join(line for line in result.stdout.splitlines() if "database" in line)


def test_verify_full_with_the_right_ca_is_verified_and_quiet(tls_server, broker, moto_s3) -> None:
    port, ca, _ = tls_server
    out = check(port, broker, moto_s3, DATABASE_SSLMODE="verify-full",
                DATABASE_SSLROOTCERT=str(ca))
    assert out.startswith("ok    database:")
    assert "(sslmode=verify-full, server identity verified)" in out and "TLSv1." in out
    assert "WARN" not in out


def test_require_encrypts_but_warns_that_the_server_is_not_verified(tls_server, broker,
                                                                    moto_s3) -> None:
    port, _, _ = tls_server
    out = check(port, broker, moto_s3, DATABASE_SSLMODE="require")
    assert "TLSv1." in out and "(sslmode=require, server identity NOT verified)" in out
    assert "WARN  database: the server's identity is not verified" in out


def test_no_tls_is_said_and_warned(tls_server, broker, moto_s3) -> None:
    port, _, _ = tls_server
    out = check(port, broker, moto_s3, DATABASE_SSLMODE="disable")
    assert "no TLS (sslmode=disable)" in out and "WARN  database:" in out


def test_verify_full_refuses_a_server_another_ca_signed(tls_server, broker, moto_s3) -> None:
    port, _, other_ca = tls_server
    out = check(port, broker, moto_s3, DATABASE_SSLMODE="verify-full",
                DATABASE_SSLROOTCERT=str(other_ca))
    assert out.startswith("FAIL  database:") and "certificate verify failed" in out
    with pytest.raises(psycopg2.OperationalError):  # the same with psycopg2 directly
        psycopg2.connect(host="localhost", port=port, dbname="lmnh_tls", user="postgres",
                         sslmode="verify-full", sslrootcert=str(other_ca)).close()
