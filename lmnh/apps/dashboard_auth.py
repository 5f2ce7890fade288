"""Who may see the dashboard, and which parts of it: a sign-in in front of every endpoint.

Sessions are Flask-Login's, in Flask's signed cookie (the key is DASHBOARD_SECRET_KEY);
passwords are argon2id hashes (argon2-cffi) in a password file; OIDC is Authlib's client against
any provider with a discovery URL (Entra ID, Google, Okta). Nothing here is hand-made crypto.

A viewer holds roles: `security` (emergencies and requests), `exhibitions` (ratings), `admin`
(everything). Roles come from the password file, or from the identity provider's groups claim
mapped by the DASHBOARD_GROUP_* settings. Every request but the sign-in pages needs a session;
the dashboard's callbacks also check the role of their panel (`Viewer.sees`).

Defences, each a library's: the sign-in and sign-out forms carry a CSRF token (Flask-WTF's
CSRFProtect, checked in those two views only: Dash's JSON callbacks are not forms, and the
SameSite=Lax cookie never goes with another site's POST); sign-in attempts are limited per
account and per address (Flask-Limiter, in this process's memory: the service runs one gunicorn
worker); an OIDC session re-reads its groups from the provider every DASHBOARD_OIDC_RECHECK_S
through its refresh token and ends when the role is gone or the provider refuses; every response
carries the security headers (Flask-Talisman: CSP, HSTS, frame-ancestors 'none', nosniff,
Referrer-Policy).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
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
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_talisman import Talisman
from flask_wtf.csrf import CSRFError, CSRFProtect
from joserfc.errors import JoseError, MissingClaimError
from requests import RequestException

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
# Sign-in attempts (right or wrong) allowed per minute for one account, and from one address
# (a few people may share an address); the next is refused before any password is checked.
ACCOUNT_ATTEMPTS = "5 per minute"
ADDRESS_ATTEMPTS = "20 per minute"
# The scopes asked of the identity provider: offline_access brings the refresh token with which
# the groups are read again (DASHBOARD_OIDC_RECHECK_S).
OIDC_SCOPES = "openid profile email offline_access"
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
    # An OIDC session's groups are read again from the provider when this old.
    oidc_recheck_s: int = 300


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
                            "(lmnh-dashboard add-user)\n", *lines])
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

# The sign-in pages' style (the CSP allows inline styles: Plotly needs them).
PAGE_STYLE = ("body{font-family:Liberation Sans,Arial,sans-serif;max-width:360px;margin:80px auto}"
              "label,input,button{display:block;width:100%;margin:6px 0}input,button{padding:6px}"
              ".error{color:#c62828}")
LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LMNH dashboard: sign in</title>
<style>{{ style }}</style></head><body>
<h1>LMNH dashboard</h1>
{% if message %}<p class="error" id="login-error">{{ message }}</p>{% endif %}
{% if oidc %}<p><a href="{{ url_for('login_oidc') }}" id="login-oidc">Sign in with the museum's
account</a></p>{% endif %}
{% if passwords %}<form method="post" action="{{ url_for('login') }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
<label>User <input name="username" id="username" autocomplete="username" required></label>
<label>Password <input name="password" id="password" type="password"
 autocomplete="current-password" required></label>
<button type="submit" id="login-button">Sign in</button></form>{% endif %}
</body></html>"""
LOGOUT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LMNH dashboard: sign out</title>
<style>{{ style }}</style></head><body>
<h1>LMNH dashboard</h1>
<form method="post" action="{{ url_for('logout') }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
<button type="submit" id="logout">Sign out</button></form>
</body></html>"""


def current_viewer(anonymous: bool) -> Viewer | None:
    """The viewer of this request, or None without a session."""
    if anonymous:
        return ANONYMOUS
    user = current_user
    return user if isinstance(user, Viewer) else None  # type: ignore[return-value]


def content_security_policy(script_hashes: list[str]) -> dict[str, str | list[str]]:
    """The dashboard's CSP: its own scripts and styles, nothing from elsewhere, never framed.

    Dash's renderer is one inline script, allowed by its hash (`Dash.csp_hashes`). Plotly makes
    <style> elements as it draws (the browser test saw 24 refused without 'unsafe-inline'), so
    style-src allows inline styles (styles run no code); scripts get no 'unsafe-inline' and no
    'unsafe-eval'.
    """
    return {
        "default-src": "'none'",
        "script-src": ["'self'", *script_hashes],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": "'self'",
        "connect-src": "'self'",
        "manifest-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
        "object-src": "'none'",
    }


def install_headers(server: Flask, script_hashes: list[str], cookie_secure: bool) -> None:
    """Security headers on every response (Flask-Talisman); the TLS proxy redirects to https.

    HSTS goes with every response the proxy forwarded as https (X-Forwarded-Proto, ProxyFix);
    a browser ignores it over plain http anyway.
    """
    Talisman(server, force_https=False, frame_options="DENY",
             strict_transport_security=True, strict_transport_security_max_age=31536000,
             strict_transport_security_include_subdomains=False,
             content_security_policy=content_security_policy(script_hashes),
             referrer_policy="same-origin",  # Flask-WTF checks the Referer on https posts
             session_cookie_secure=cookie_secure, session_cookie_http_only=True,
             session_cookie_samesite="Lax")


@dataclass(frozen=True)
class Recheck:
    """What the provider said when an OIDC session's groups were read again."""

    at: float  # time.time()
    roles: frozenset[Role]  # empty: refused
    refresh_token: str | None
    why: str = ""  # why refused, for the log


class RoleRechecks:
    """Each refresh token is used once: requests of one session arriving together (Dash sends
    several callbacks at once) share the first one's answer instead of each asking the provider
    with a token it may already have replaced."""

    KEPT_S = 120

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._answers: dict[str, Recheck] = {}

    def get(self, refresh_token: str, ask: Any) -> tuple[Recheck, bool]:
        """The answer for this token, and whether this call asked for it (else it shares it)."""
        key = hashlib.sha256(refresh_token.encode()).hexdigest()
        with self._lock:
            now = time.time()
            for old in [k for k, a in self._answers.items() if now - a.at > self.KEPT_S]:
                del self._answers[old]
                self._locks.pop(old, None)
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            answer = self._answers.get(key)
            if answer is not None:
                return answer, False
            answer = ask(refresh_token)
            with self._lock:
                self._answers[key] = answer
            return answer, True


def install(server: Flask, config: AuthConfig) -> None:
    """Sign-in pages, session handling and a guard refusing everything else without a session."""
    server.config.update(
        SECRET_KEY=config.secret_key,
        SESSION_COOKIE_NAME="lmnh_dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=config.cookie_secure,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=config.session_hours),
        # The cookie is set at sign-in only (and at an OIDC session's recheck): the lifetime is
        # absolute, and a refresh answered after a sign-out cannot set the signed-out session
        # again (but for a recheck racing the sign-out, a window of one provider call).
        SESSION_REFRESH_EACH_REQUEST=False,
        # The token is checked by the sign-in and sign-out views only (csrf.protect below).
        WTF_CSRF_CHECK_DEFAULT=False,
    )
    manager = LoginManager(server)
    manager.session_protection = "strong"  # a session moved to another client is dropped
    csrf = CSRFProtect(server)
    # In memory: one gunicorn worker (deploy/lmnh-dashboard.service) sees every attempt.
    limiter = Limiter(get_remote_address, app=server, storage_uri="memory://",
                      default_limits=[], headers_enabled=False)

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
                                      passwords=config.password_file is not None,
                                      style=PAGE_STYLE), status

    @server.errorhandler(CSRFError)
    def forged(error: CSRFError) -> Any:
        log.warning("refused a %s to %s without a valid CSRF token (%s) from %s", request.method,
                    request.path, error.description, request.remote_addr)
        return page("The form had expired or came from another site: sign in here.", 400)

    @server.errorhandler(RateLimitExceeded)
    def too_many(_error: RateLimitExceeded) -> Any:
        log.warning("refused a sign-in for user %r from %s: too many attempts, password not "
                    "checked", request.form.get("username", "")[:64], request.remote_addr)
        return page("Too many sign-in attempts: wait a minute and try again.", 429)

    def account() -> str:
        return "account:" + request.form.get("username", "")[:64]

    @server.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "GET" or config.password_file is None:
            return page()
        csrf.protect()
        with limiter.limit(ADDRESS_ATTEMPTS), limiter.limit(ACCOUNT_ATTEMPTS, key_func=account):
            name = request.form.get("username", "")
            entry = check_password(read_password_file(config.password_file), name,
                                   request.form.get("password", ""))
        if entry is None or not entry.roles:
            log.warning("failed sign-in for user %r from %s", name[:64], request.remote_addr)
            return page("Unknown user or wrong password.", 401)
        return signed_in(Viewer(f"password:{entry.name}", entry.name, entry.roles))

    recheck_oidc = None
    if config.oidc is not None:
        oidc = config.oidc
        oauth = OAuth(server)
        oauth.register("idp", client_id=oidc.client_id, client_secret=oidc.client_secret,
                       server_metadata_url=oidc.discovery_url,
                       client_kwargs={"scope": OIDC_SCOPES})
        rechecks = RoleRechecks()

        @server.route("/login/oidc")
        def login_oidc() -> Any:
            return oauth.idp.authorize_redirect(url_for("oidc_callback", _external=True))

        @server.route("/auth/callback")
        def oidc_callback() -> Any:
            try:
                token = oauth.idp.authorize_access_token()
                claims = token["userinfo"]
            except MissingClaimError as error:
                log.warning("OIDC sign-in refused: the ID token has no %r claim", error.claim)
                return page("Sign-in with the museum's account failed: the identity provider "
                            "did not say who you are.", 401)
            except (OAuthError, JoseError, KeyError) as error:
                log.warning("OIDC sign-in failed: %s", getattr(error, "error", "no id token"))
                return page("Sign-in with the museum's account failed.", 401)
            subject = str(claims.get("sub") or "")
            if not subject:
                log.warning("OIDC sign-in refused: the ID token has an empty 'sub' claim")
                return page("Sign-in with the museum's account failed: the identity provider "
                            "did not say who you are.", 401)
            roles = roles_from_claims(claims, oidc.groups_claim, config.groups)
            name = str(claims.get("preferred_username") or claims.get("email") or subject)
            if not roles:
                log.warning("OIDC user %r is in no dashboard group", name[:64])
                return page("Your account is in none of the dashboard's groups.", 403)
            session["oidc_subject"] = subject
            session["oidc_name"] = name
            session["oidc_roles"] = sorted(roles)
            # Signed, HttpOnly, Secure: and useless without the client secret, which only the
            # server holds (the provider authenticates the client at its token endpoint).
            session["oidc_refresh_token"] = token.get("refresh_token")
            session["oidc_checked_at"] = time.time()
            return signed_in(Viewer(f"oidc:{subject}", name, roles))

        def ask_provider(refresh_token: str) -> Recheck:
            """The groups the provider gives now: from the refreshed ID token, else userinfo."""
            try:
                token = oauth.idp.fetch_access_token(grant_type="refresh_token",
                                                     refresh_token=refresh_token)
                if "id_token" in token:
                    claims: Mapping[str, Any] = oauth.idp.parse_id_token(token, nonce=None)
                else:
                    claims = oauth.idp.userinfo(token=token)
            except (OAuthError, JoseError, RequestException, KeyError, ValueError) as error:
                why = getattr(error, "error", None) or type(error).__name__
                return Recheck(time.time(), frozenset(), None, f"the provider refused ({why})")
            if str(claims.get("sub") or "") != session.get("oidc_subject"):
                return Recheck(time.time(), frozenset(), None, "another subject")
            roles = roles_from_claims(claims, oidc.groups_claim, config.groups)
            return Recheck(time.time(), roles, token.get("refresh_token") or refresh_token,
                           "" if roles else "in no dashboard group now")

        def recheck() -> bool:
            """False when this OIDC session must end; True when it may go on (roles updated)."""
            if time.time() - session.get("oidc_checked_at", 0) < config.oidc_recheck_s:
                return True
            refresh_token = session.get("oidc_refresh_token")
            if refresh_token:
                answer, asked = rechecks.get(refresh_token, ask_provider)
            else:
                answer = Recheck(time.time(), frozenset(), None, "no refresh token given")
                asked = True
            name = session.get("oidc_name", "?")
            if not answer.roles:
                if asked:  # once, not for each request that shared the answer
                    log.warning("OIDC session of %r ended at its recheck: %s", name[:64],
                                answer.why)
                return False
            session["oidc_refresh_token"] = answer.refresh_token
            session["oidc_checked_at"] = answer.at
            if sorted(answer.roles) != session.get("oidc_roles"):
                if asked:
                        log.info("OIDC roles of %r now %s", name[:64],
                             ",".join(sorted(answer.roles)))
                session["oidc_roles"] = sorted(answer.roles)
                login_user(Viewer(current_user.get_id(), name, answer.roles))  # this request too
            return True

        recheck_oidc = recheck

    @server.route("/logout", methods=["GET", "POST"])
    def logout() -> Any:
        if request.method == "GET":  # a link or a bookmark: a form, so no other site signs out
            return render_template_string(LOGOUT_PAGE, style=PAGE_STYLE)
        csrf.protect()
        logout_user()
        session.clear()
        return redirect(url_for("login"))

    def refused() -> Any:
        if request.method == "GET" and request.path == "/":
            return redirect(url_for("login"))
        return Response("sign in first\n", 401, mimetype="text/plain")

    @server.before_request
    def guard() -> Any:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return None
        if not current_user.is_authenticated:
            return refused()
        if (recheck_oidc is not None and current_user.get_id().startswith("oidc:")
                and not recheck_oidc()):
            logout_user()
            session.clear()
            return refused()
        return None
