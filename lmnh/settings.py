"""Every entry point's settings, from the environment (after `.env`), in one place.

Each entry point asks only for what it uses: the daemon for `PipelineSettings`, the backfill for
`BackfillSettings` (no Kafka), the dashboard for `DashboardSettings` (the database only), the
schema upgrade for `MigrateSettings` (the database as its administrator, and the clock). The
names are the operators' contract (.env.example lists them). A blank value for an optional
setting (`SASL_MECHANISM=`) counts as not set. Errors name the setting, never its value.

The daemon, the backfill and the dashboard may also take settings from one AWS Secrets Manager
secret, SECRETS_MANAGER_SECRET_ID, whose SecretString is a JSON object of setting names
({"DATABASE_PASSWORD": "...", "PASSWORD": "..."}), read once at start through pydantic-settings'
AWSSecretsManagerSettingsSource. Precedence, highest first: a variable set (not blank) in the
process's environment, then the secret, then `.env`, then the default. So a secret overrides a
stale `.env`, and an operator can still override one value for one run; a variable that hides a
key of the secret is reported on stderr by name.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import find_dotenv, load_dotenv
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import AWSSecretsManagerSettingsSource, BaseSettings, SettingsConfigDict

import db
from validation import Rules

EXIT_CONFIG = 2
S = TypeVar("S", bound=BaseSettings)


class _Environment(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True,
                                      env_ignore_empty=True)


class SecretsEnvironment(_Environment):
    """Where the secret settings are kept, for the entry points that read one (read_settings)."""

    # One Secrets Manager secret (name or ARN); region, endpoint and credentials come from
    # boto3's own chain (AWS_REGION, AWS_ENDPOINT_URL, the instance role ...).
    SECRETS_MANAGER_SECRET_ID: str | None = None


class DatabaseServerEnvironment(_Environment):
    """Which database, where, and how TLS reaches it: every entry point and reset_database.sh."""

    DATABASE_NAME: str = Field(min_length=1)
    DATABASE_IP: str = Field(min_length=1)
    DATABASE_PORT: int = Field(5432, ge=1, le=65535)
    DATABASE_SSLMODE: Literal["disable", "allow", "prefer", "require", "verify-ca",
                              "verify-full"] | None = None
    DATABASE_SSLROOTCERT: str | None = None


class DatabaseEnvironment(DatabaseServerEnvironment):
    """The DATABASE_* settings, shared by every entry point."""

    DATABASE_USERNAME: str = Field(min_length=1)
    # Blank or unset: none is sent, and libpq may take one from ~/.pgpass.
    DATABASE_PASSWORD: SecretStr = SecretStr("")
    DATABASE_CONNECT_TIMEOUT_S: int = Field(10, ge=1)
    DATABASE_STATEMENT_TIMEOUT_MS: int = Field(30_000, ge=100)

    def database(self) -> db.DatabaseSettings:
        return db.DatabaseSettings(
            host=self.DATABASE_IP,
            port=self.DATABASE_PORT,
            name=self.DATABASE_NAME,
            user=self.DATABASE_USERNAME,
            password=self.DATABASE_PASSWORD.get_secret_value(),
            sslmode=self.DATABASE_SSLMODE,
            sslrootcert=self.DATABASE_SSLROOTCERT,
            connect_timeout_s=self.DATABASE_CONNECT_TIMEOUT_S,
            statement_timeout_ms=self.DATABASE_STATEMENT_TIMEOUT_MS,
        )


class MuseumEnvironment(_Environment):
    """The museum's clock and the bounds of a valid press."""

    MUSEUM_TIMEZONE: str = "Europe/London"
    OPENING_TIME: str = Field("08:45:00", pattern=r"^\d\d:\d\d(:\d\d)?$")
    CLOSING_TIME: str = Field("18:15:00", pattern=r"^\d\d:\d\d(:\d\d)?$")
    MAX_FUTURE_SECONDS: int = Field(300, ge=0)

    @field_validator("MUSEUM_TIMEZONE")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not a known IANA time zone") from None
        return zone

    def clock(self) -> db.MuseumClock:
        """The zone and hours as the database's museum_settings row holds them."""
        rules = self.rules({})
        return db.MuseumClock(self.MUSEUM_TIMEZONE, rules.opens, rules.closes)

    def rules(self, starts: Mapping[int, date]) -> Rules:
        """The rules for the exhibitions loaded: site number -> START_DATE (museum-local)."""
        return Rules(
            sites=frozenset(starts),
            starts=dict(starts),
            museum_tz=ZoneInfo(self.MUSEUM_TIMEZONE),
            opens=datetime.strptime(self.OPENING_TIME, _time_format(self.OPENING_TIME)).time(),
            closes=datetime.strptime(self.CLOSING_TIME, _time_format(self.CLOSING_TIME)).time(),
            max_future=timedelta(seconds=self.MAX_FUTURE_SECONDS),
        )


class KafkaEnvironment(_Environment):
    """The topic, the consumer group and how to reach the brokers."""

    BOOTSTRAP_SERVERS: str = Field(min_length=1)
    SECURITY_PROTOCOL: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "SASL_SSL"
    SASL_MECHANISM: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    USERNAME: str | None = None
    PASSWORD: SecretStr | None = None
    GROUP: str = Field(min_length=1)
    AUTO_OFFSET: Literal["earliest", "latest"] = "earliest"
    TOPIC: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    KAFKA_SESSION_TIMEOUT_MS: int = Field(45_000, ge=1_000)
    KAFKA_FETCH_WAIT_MAX_MS: int = Field(50, ge=1, le=10_000)
    # Static group membership (KIP-345): a restart within the session timeout takes its
    # partitions back at once. One per host by default; `off` for dynamic membership.
    GROUP_INSTANCE_ID: str = Field(
        default_factory=lambda: f"lmnh-pipeline@{socket.gethostname()}", min_length=1,
        max_length=249)

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaEnvironment:
        if self.SECURITY_PROTOCOL.startswith("SASL") and not (self.USERNAME and self.PASSWORD):
            raise ValueError("USERNAME and PASSWORD are required with SASL")
        return self

    def kafka(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.BOOTSTRAP_SERVERS,
            "security.protocol": self.SECURITY_PROTOCOL,
            "group.id": self.GROUP,
            "auto.offset.reset": self.AUTO_OFFSET,
            "enable.auto.commit": False,
            "session.timeout.ms": self.KAFKA_SESSION_TIMEOUT_MS,
            **({} if self.GROUP_INSTANCE_ID.lower() == "off"
               else {"group.instance.id": self.GROUP_INSTANCE_ID}),
            # How long the broker may hold an empty fetch: bounds the latency of a quiet topic.
            "fetch.wait.max.ms": self.KAFKA_FETCH_WAIT_MAX_MS,
            # Prefetch two batches per partition, not the whole backlog (the default is
            # 100,000 each), so memory stays flat with the backlog's size: with 20,000 the RSS
            # grew 7.6 MB from a fifth of the benchmark's backlog to all of it, with 10,000
            # 3.9 MB, draining as fast (docs/performance.md).
            "queued.min.messages": 10_000,
            # When that prefetch is full, fetch again after 20 ms, not librdkafka's default
            # 1 s: with the default, a consumer busy writing idles a second at a time, which
            # capped a backlog's catch-up at 27,000 messages/s.
            "fetch.queue.backoff.ms": 20,
            "client.id": "lmnh-pipeline",
            # A broker closing an idle connection is routine; a real failure still gets a line.
            "log.connection.close": False,
        }
        if self.SECURITY_PROTOCOL.startswith("SASL"):
            assert self.USERNAME is not None and self.PASSWORD is not None
            config |= {
                "sasl.mechanism": self.SASL_MECHANISM,
                "sasl.username": self.USERNAME,
                "sasl.password": self.PASSWORD.get_secret_value(),
            }
        return config


class BackfillSettings(DatabaseEnvironment, MuseumEnvironment, SecretsEnvironment):
    """The historical backfill: the bucket, the database and the rules; no Kafka."""

    S3_BUCKET: str = Field(min_length=3)
    REJECT_LOG: Path = Path("erroneous_data.log")
    # Bytes of a rejected value kept in its reject-log line (its length and SHA-256 always are):
    # a flood of big junk then writes a few KiB a message, not the message.
    REJECT_LOG_MAX_VALUE_BYTES: int = Field(4096, ge=0, le=1_048_576)
    BATCH_SIZE: int = Field(5000, ge=1, le=100_000)


class PipelineSettings(BackfillSettings, KafkaEnvironment):
    """Every setting of the daemon."""

    BATCH_LINGER_MS: int = Field(20, ge=1, le=10_000)
    STATS_INTERVAL_S: int = Field(60, ge=1)
    METADATA_REFRESH_S: int = Field(600, ge=1)
    ALERT_SNS_TOPIC_ARN: str | None = Field(None, pattern=r"^arn:[^:]+:sns:")
    # Judged messages held while the database is away; past it, newer ones are judged for
    # their alerts only and read again once the database has caught up.
    WRITE_BUFFER_MESSAGES: int = Field(50_000, ge=1)
    # The Prometheus metrics and health endpoint; unset (or 0) serves nothing.
    METRICS_ADDRESS: str = Field("127.0.0.1", min_length=1)
    METRICS_PORT: int | None = Field(None, ge=0, le=65535)
    # /healthz fails when the loop has not turned for this long.
    HEALTH_STALL_S: int = Field(120, ge=5)


class MigrateSettings(DatabaseServerEnvironment, MuseumEnvironment):
    """migrate.py: the database, as the administrator role that owns the tables (as for
    reset_database.sh), and the museum's clock to write into it."""

    DATABASE_ADMIN_USERNAME: str | None = None
    DATABASE_CONNECT_TIMEOUT_S: int = Field(10, ge=1)

    def admin_database(self, user: str, password: str) -> db.DatabaseSettings:
        """No statement timeout: a migration may rewrite a large table."""
        return db.DatabaseSettings(
            host=self.DATABASE_IP, port=self.DATABASE_PORT, name=self.DATABASE_NAME, user=user,
            password=password, sslmode=self.DATABASE_SSLMODE,
            sslrootcert=self.DATABASE_SSLROOTCERT,
            connect_timeout_s=self.DATABASE_CONNECT_TIMEOUT_S, statement_timeout_ms=0)


class ResetSettings(DatabaseServerEnvironment, MuseumEnvironment):
    """reset_database.sh: the database, the administrator role that recreates its schema, and the
    museum's clock it writes into it.

    Never the pipeline's DATABASE_USERNAME or DATABASE_PASSWORD: the administrator's password
    comes from PGPASSWORD or ~/.pgpass, as for any libpq tool.
    """

    DATABASE_ADMIN_USERNAME: str | None = None


class DashboardSettings(DatabaseEnvironment, MuseumEnvironment, SecretsEnvironment):
    """The dashboard: the database (as the read-only role), the museum's clock and who may look.

    Sign-in is by a password file, by OIDC, or both; at least one is required (dashboard.py
    checks), and so is the session key. Groups name the identity provider's groups (or the
    password file's) that see each part.
    """

    DASHBOARD_SECRET_KEY: SecretStr | None = None
    DASHBOARD_PASSWORD_FILE: Path | None = None
    DASHBOARD_OIDC_DISCOVERY_URL: str | None = Field(None, pattern=r"^https?://")
    DASHBOARD_OIDC_CLIENT_ID: str | None = None
    DASHBOARD_OIDC_CLIENT_SECRET: SecretStr | None = None
    DASHBOARD_OIDC_GROUPS_CLAIM: str = Field("groups", min_length=1)
    DASHBOARD_GROUP_SECURITY: str = Field("security", min_length=1)
    DASHBOARD_GROUP_EXHIBITIONS: str = Field("exhibitions", min_length=1)
    DASHBOARD_GROUP_ADMIN: str = Field("admin", min_length=1)
    DASHBOARD_COOKIE_SECURE: bool = True
    DASHBOARD_SESSION_HOURS: int = Field(8, ge=1, le=168)
    DASHBOARD_REFRESH_S: int = Field(15, ge=1, le=3600)
    # An OIDC session's groups are read again from the identity provider this often.
    DASHBOARD_OIDC_RECHECK_S: int = Field(300, ge=1, le=3600)

    @field_validator("DASHBOARD_SECRET_KEY")
    @classmethod
    def _long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < 32:
            raise ValueError("at least 32 characters (python3 -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))')")
        return key

    @model_validator(mode="after")
    def _oidc_complete(self) -> DashboardSettings:
        oidc = (self.DASHBOARD_OIDC_DISCOVERY_URL, self.DASHBOARD_OIDC_CLIENT_ID,
                self.DASHBOARD_OIDC_CLIENT_SECRET)
        if any(oidc) and not all(oidc):
            raise ValueError("DASHBOARD_OIDC_DISCOVERY_URL, DASHBOARD_OIDC_CLIENT_ID and "
                             "DASHBOARD_OIDC_CLIENT_SECRET go together")
        return self


def _time_format(text: str) -> str:
    return "%H:%M:%S" if text.count(":") == 2 else "%H:%M"


class SecretUnreadable(Exception):
    """The secret named by SECRETS_MANAGER_SECRET_ID could not be read (never holds a value)."""


def secret_settings(kind: type[BaseSettings], secret_id: str) -> dict[str, Any]:
    """The settings of `kind` that the secret holds, by name (its other keys are ignored)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        source = AWSSecretsManagerSettingsSource(kind, secret_id)
        held = source()
    except (ClientError, BotoCoreError) as error:  # not found, access denied, unreachable ...
        raise SecretUnreadable(_one_line(error)) from None
    except (ValueError, TypeError, KeyError, AttributeError):
        # Never the error's text: it may quote the secret's contents.
        raise SecretUnreadable("its SecretString is not a JSON object of setting names") from None
    # A blank value counts as not set, as in the environment.
    return {name: value for name, value in held.items()
            if name in kind.model_fields and not (isinstance(value, str) and not value.strip())}


def read_settings(kind: type[S]) -> S:
    """Settings from the environment, `.env` and (when SECRETS_MANAGER_SECRET_ID names one) the
    secret; exits with status 2 and one line naming what is wrong."""
    explicit = {name for name, value in os.environ.items() if value.strip()}
    load_dotenv(find_dotenv(usecwd=True))  # into os.environ: boto3 reads its AWS_* from there
    from_secret: dict[str, Any] = {}
    secret_id = None
    if issubclass(kind, SecretsEnvironment):
        secret_id = os.environ.get("SECRETS_MANAGER_SECRET_ID", "").strip() or None
    if secret_id:
        try:
            held = secret_settings(kind, secret_id)
        except SecretUnreadable as error:
            _config_error(f"SECRETS_MANAGER_SECRET_ID: cannot read secret {secret_id!r} "
                          f"from AWS Secrets Manager ({error})")
        from_secret = {name: value for name, value in held.items() if name not in explicit}
        hidden = sorted(set(held) - set(from_secret))
        if hidden:
            print(f"settings: {', '.join(hidden)} set in the environment, which wins over "
                  f"secret {secret_id!r}", file=sys.stderr)
    try:
        # Init arguments outrank the environment (and so `.env`) in pydantic-settings.
        return kind(**from_secret)
    except ValidationError as error:
        problems = "; ".join(
            f"{_where(e['loc'], from_secret, secret_id)}: {e['msg']}" for e in error.errors()
        )
        _config_error(problems)


def _where(loc: tuple, from_secret: Mapping[str, Any], secret_id: str | None) -> str:
    name = ".".join(map(str, loc)) or "settings"
    return f"{name} (from secret {secret_id!r})" if loc and loc[0] in from_secret else name


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _config_error(problems: str) -> NoReturn:
    print(f"configuration error: {problems}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)
