"""Who may see the dashboard, and which parts of it: a sign-in in front of every endpoint.

Sessions are Flask-Login's, in Flask's signed cookie (the key is DASHBOARD_SECRET_KEY);
passwords are argon2id hashes (argon2-cffi) in a password file; OIDC is Authlib's client against
any provider with a discovery URL (Entra ID, Google, Okta). Nothing here is hand-made crypto.

A viewer holds roles: `security` (emergencies and requests), `exhibitions` (ratings), `admin`
(everything). Roles come from the password file, or from the identity provider's groups claim
mapped by the DASHBOARD_GROUP_* settings. Every request but the sign-in pages needs a session;
the dashboard's callbacks also check the role of their panel (`Viewer.sees`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from authlib.integrations.base_client import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Flask, Response, redirect, render_template_string, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

log = logging.getLogger("dashboard.auth")
Role = Literal["security", "exhibitions", "admin"]
ROLES: tuple[Role, ...] = ("security", "exhibitions", "admin")
Section = Literal["requests", "ratings", "quality"]
# Which roles see which part of the page; admin sees every part.
SECTION_ROLES: dict[Section, frozenset[Role]] = {
    "requests": frozenset({"security", "admin"}),
    "ratings": frozenset({"exhibitions", "admin"}),
    "quality": frozenset({"admin"}),
}
PUBLIC_ENDPOINTS = frozenset({"login", "login_oidc", "oidc_callback", "logout"})
_hasher = PasswordHasher()  # argon2id with the library's current defaults
# Verified for an unknown name, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password")


@dataclass(frozen=True)
class Viewer(UserMixin):
    """A signed-in person: `key` is Flask-Login's id ("password:NAME" or "oidc:SUBJECT")."""

    key: str
    name: str
    roles: frozenset[Role]

    def get_id(self) -> str:
        return self.key

    def sees(self, section: Section) -> bool:
        return bool(self.roles & SECTION_ROLES[section])


ANONYMOUS = Viewer("anonymous", "anonymous (this computer only)", frozenset({"admin"}))


@dataclass(frozen=True)
class PasswordEntry:
    name: str
    roles: frozenset[Role]
    hash: str


@dataclass(frozen=True)
class Oidc:
    discovery_url: str
    client_id: str
    client_secret: str = field(repr=False)
    groups_claim: str = "groups"


@dataclass(frozen=True)
class AuthConfig:
    secret_key: str = field(repr=False)
    password_file: Path | None = None
    oidc: Oidc | None = None
    # The identity provider's group name for each role.
    groups: Mapping[Role, str] = field(default_factory=lambda: {r: r for r in ROLES})
    cookie_secure: bool = True
    session_hours: int = 8


# ---------------------------------------------------------------- the password file


def parse_roles(text: str) -> frozenset[Role]:
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    unknown = roles - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role {sorted(unknown)[0]!r} (roles: {', '.join(ROLES)})")
    return roles  # type: ignore[return-value]


def read_password_file(path: Path) -> dict[str, PasswordEntry]:
    """`NAME:ROLE,ROLE:ARGON2_HASH` lines; blank lines and `#` comments are skipped."""
    entries: dict[str, PasswordEntry] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise ValueError(f"{path}:{number}: not NAME:ROLES:HASH")
        entries[parts[0]] = PasswordEntry(parts[0], parse_roles(parts[1]), parts[2])
    return entries


def add_user(path: Path, name: str, roles: frozenset[Role], password: str) -> None:
    """Adds or replaces `name`, hashing `password`; the file is replaced atomically, mode 0640."""
    if not name or ":" in name or any(c.isspace() for c in name):
        raise ValueError("a user name has no colon and no white space")
    if not roles:
        raise ValueError("give at least one role")
    entries = read_password_file(path) if path.exists() else {}
    entries[name] = PasswordEntry(name, roles, _hasher.hash(password))
    lines = [f"{e.name}:{','.join(sorted(e.roles))}:{e.hash}\n" for e in entries.values()]
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, 0o640)
        with os.fdopen(descriptor, "w") as out:
            out.writelines(["# LMNH dashboard users: NAME:ROLES:ARGON2_HASH "
                            "(python dashboard.py add-user)\n", *lines])
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_password(entries: Mapping[str, PasswordEntry], name: str,
                   password: str) -> PasswordEntry | None:
    entry = entries.get(name)
    try:
        _hasher.verify(entry.hash if entry else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return entry


# ---------------------------------------------------------------- identity-provider groups


def roles_from_claims(claims: Mapping[str, Any], claim: str,
                      groups: Mapping[Role, str]) -> frozenset[Role]:
    """The roles whose group is in the claim (a list of names or ids, or one string)."""
    value = claims.get(claim) or []
    held = {value} if isinstance(value, str) else {str(v) for v in value}
    return frozenset(role for role, group in groups.items() if group in held)


# ---------------------------------------------------------------- the Flask side

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LMNH dashboard: sign in</title>
<style>body{font-family:Liberation Sans,Arial,sans-serif;max-width:360px;margin:80px auto}
label,input,button{display:block;width:100%;margin:6px 0}input,button{padding:6px}
.error{color:#c62828}</style></head><body>
<h1>LMNH dashboard</h1>
{% if message %}<p class="error" id="login-error">{{ message }}</p>{% endif %}
{% if oidc %}<p><a href="{{ url_for('login_oidc') }}" id="login-oidc">Sign in with the museum's
account</a></p>{% endif %}
{% if passwords %}<form method="post" action="{{ url_for('login') }}">
<label>User <input name="username" id="username" autocomplete="username" required></label>
<label>Password <input name="password" id="password" type="password"
 autocomplete="current-password" required></label>
<button type="submit" id="login-button">Sign in</button></form>{% endif %}
</body></html>"""


def current_viewer(anonymous: bool) -> Viewer | None:
    """The viewer of this request, or None without a session."""
    if anonymous:
        return ANONYMOUS
    user = current_user
    return user if isinstance(user, Viewer) else None  # type: ignore[return-value]


def install(server: Flask, config: AuthConfig) -> None:
    """Sign-in pages, session handling and a guard refusing everything else without a session."""
    server.config.update(
        SECRET_KEY=config.secret_key,
        SESSION_COOKIE_NAME="lmnh_dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=config.cookie_secure,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=config.session_hours),
        # The cookie is set at sign-in only: the lifetime is absolute, and a refresh answered
        # after a sign-out cannot set the signed-out session again.
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    manager = LoginManager(server)
    manager.session_protection = "strong"  # a session moved to another client is dropped

    @manager.user_loader
    def load(key: str) -> Viewer | None:
        kind, _, name = key.partition(":")
        if kind == "password" and config.password_file is not None:
            # Read at each request: a removed user or changed roles take effect at once.
            entry = read_password_file(config.password_file).get(name)
            return Viewer(key, name, entry.roles) if entry and entry.roles else None
        if kind == "oidc" and session.get("oidc_subject") == name:
            return Viewer(key, session.get("oidc_name", name),
                          parse_roles(",".join(session.get("oidc_roles", []))))
        return None

    def signed_in(viewer: Viewer) -> Response:
        session.permanent = True
        login_user(viewer)
        log.info("signed in: %s (%s)", viewer.name, ",".join(sorted(viewer.roles)))
        return redirect("/")  # never a caller-supplied address

    def page(message: str = "", status: int = 200) -> tuple[str, int]:
        return render_template_string(LOGIN_PAGE, message=message, oidc=config.oidc is not None,
                                      passwords=config.password_file is not None), status

    @server.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "GET" or config.password_file is None:
            return page()
        name = request.form.get("username", "")
        entry = check_password(read_password_file(config.password_file), name,
                               request.form.get("password", ""))
        if entry is None or not entry.roles:
            log.warning("failed sign-in for user %r from %s", name[:64], request.remote_addr)
            return page("Unknown user or wrong password.", 401)
        return signed_in(Viewer(f"password:{entry.name}", entry.name, entry.roles))

    if config.oidc is not None:
        oidc = config.oidc
        oauth = OAuth(server)
        oauth.register("idp", client_id=oidc.client_id, client_secret=oidc.client_secret,
                       server_metadata_url=oidc.discovery_url,
                       client_kwargs={"scope": "openid profile email"})

        @server.route("/login/oidc")
        def login_oidc() -> Any:
            return oauth.idp.authorize_redirect(url_for("oidc_callback", _external=True))

        @server.route("/auth/callback")
        def oidc_callback() -> Any:
            try:
                claims = oauth.idp.authorize_access_token()["userinfo"]
            except (OAuthError, KeyError) as error:
                log.warning("OIDC sign-in failed: %s", getattr(error, "error", "no id token"))
                return page("Sign-in with the museum's account failed.", 401)
            roles = roles_from_claims(claims, oidc.groups_claim, config.groups)
            name = str(claims.get("preferred_username") or claims.get("email") or claims["sub"])
            if not roles:
                log.warning("OIDC user %r is in no dashboard group", name[:64])
                return page("Your account is in none of the dashboard's groups.", 403)
            session["oidc_subject"] = str(claims["sub"])
            session["oidc_name"] = name
            session["oidc_roles"] = sorted(roles)
            return signed_in(Viewer(f"oidc:{claims['sub']}", name, roles))

    @server.route("/logout")
    def logout() -> Any:
        logout_user()
        session.clear()
        return redirect(url_for("login"))

    @server.before_request
    def guard() -> Any:
        if request.endpoint in PUBLIC_ENDPOINTS or current_user.is_authenticated:
            return None
        if request.method == "GET" and request.path == "/":
            return redirect(url_for("login"))
        return Response("sign in first\n", 401, mimetype="text/plain")
