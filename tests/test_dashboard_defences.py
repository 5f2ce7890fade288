"""The dashboard's defences as the stack serves them: gunicorn, real Chromium, the local OpenID
provider of test_dashboard.py. A sign-in (or sign-out) posted from another site is refused; the
sixth sign-in attempt within a minute is refused without checking its password; a user taken
out of the provider's group is signed out at the next recheck; an ID token without `sub` is a
refused sign-in; every response carries the security headers, and the page runs under them."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import test_dashboard
from conftest import ROOT, Database, wait_until
from test_dashboard import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    CLIENT_ID,
    CLIENT_SECRET,
    GUARDS_GROUP,
    PASSWORD,
    RATINGS_CALLBACK,
    REQUESTS_CALLBACK,
    SECRET_KEY,
    LocalProvider,
    NoRedirect,
    dashboard_env,
    gunicorn,
    needs_chromium,
    post_from_page,
    served,
    shown_day,
    sign_in,
)

from lmnh.apps import dashboard_auth as auth
from lmnh.local.embedded import free_port

pytestmark = [needs_chromium, pytest.mark.slow]
stored = test_dashboard.stored  # the fixtures: the dashboard's rows, the password file
users_file = test_dashboard.users_file


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)


@contextmanager
def other_site(html: str) -> Iterator[str]:
    """A page served from another origin (another port on this host): what an attacker's page,
    or another application on the museum's host, could serve a signed-in viewer."""
    body = html.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def own_csrf_token(url: str) -> str:
    """A valid token, but of the attacker's own session (fetched from the sign-in page)."""
    with urllib.request.urlopen(url + "login", timeout=10) as response:
        page = response.read().decode()
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def auto_submit(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    return (f'<!doctype html><html><body><form id="f" method="post" action="{action}">{inputs}'
            '</form><script>document.getElementById("f").submit()</script></body></html>')


def signed_in(page: Any, url: str) -> bool:
    """Whether this browser context has a session: the dashboard page, not the sign-in form."""
    page.goto(url)
    return page.url == url


def test_a_sign_in_or_sign_out_posted_from_another_site_is_refused(
        stored: tuple[Database, date], users_file: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    database, _ = stored
    env = dashboard_env(database, DASHBOARD_SECRET_KEY=SECRET_KEY,
                        DASHBOARD_PASSWORD_FILE=str(users_file))
    with gunicorn(env, tmp_path) as (url, log_path), sync_playwright() as playwright:
        browser = launch(playwright)
        # Login CSRF: the other site signs the visitor in as its own account ("boss"), with the
        # right password and even a real token, but of another session.
        forged_sign_in = auto_submit(url + "login", {
            "username": "boss", "password": PASSWORD, "csrf_token": own_csrf_token(url)})
        with other_site(forged_sign_in) as attacker:
            victim = browser.new_context().new_page()
            victim.goto(url)  # the visitor has the sign-in page's session (and its token)
            with victim.expect_response(lambda r: r.url == url + "login"
                                        and r.request.method == "POST") as posted:
                victim.goto(attacker)
            assert posted.value.status == 400
            victim.wait_for_selector("#login-error")
            assert "came from another site" in victim.inner_text("#login-error")
            assert not signed_in(victim, url)

        # The genuine form still works; then the other site tries to sign the viewer out.
        guard = sign_in(browser, url, "guard")
        shown_day(guard)
        token = own_csrf_token(url)
        with other_site(auto_submit(url + "logout", {"csrf_token": token})) as attacker:
            with guard.expect_response(lambda r: r.url == url + "logout"
                                       and r.request.method == "POST") as posted:
                guard.goto(attacker)
            assert posted.value.status == 400
        guard.goto(url + "logout")  # a link to the old sign-out address only shows a form
        assert signed_in(guard, url)
        shown_day(guard)
        guard.click("#logout")  # the page's own sign-out form
        assert guard.url == url + "login" and not signed_in(guard, url)
        browser.close()
    log = log_path.read_text()
    assert log.count("without a valid CSRF token") == 2, log
    assert "refused a POST to /login" in log and "refused a POST to /logout" in log
    assert "signed in: boss" not in log and "signed in: guard (security)" in log


def try_password(page: Any, url: str, name: str, password: str) -> tuple[int, str]:
    """One sign-in through the form: the answer's status and the page's message."""
    page.goto(url + "login")
    page.fill("#username", name)
    page.fill("#password", password)
    with page.expect_response(lambda r: r.url == url + "login"
                              and r.request.method == "POST") as posted:
        page.click("#login-button")
    status = posted.value.status
    message = page.inner_text("#login-error") if page.locator("#login-error").count() else ""
    return status, message


def test_the_sixth_attempt_within_a_minute_is_refused_without_checking_it(
        stored: tuple[Database, date], users_file: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    database, _ = stored
    env = dashboard_env(database, DASHBOARD_SECRET_KEY=SECRET_KEY,
                        DASHBOARD_PASSWORD_FILE=str(users_file))
    with gunicorn(env, tmp_path) as (url, log_path), sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_context().new_page()
        for attempt in range(5):
            status, message = try_password(page, url, "guard", f"wrong password {attempt}")
            assert (status, message) == (401, "Unknown user or wrong password."), attempt
        # The sixth is the right password: refused all the same, so it was never checked.
        status, message = try_password(page, url, "guard", PASSWORD)
        assert status == 429 and "Too many sign-in attempts" in message
        assert not signed_in(page, url)
        # Per account: another account from the same address still signs in.
        assert signed_in(sign_in(browser, url, "curator"), url)

        # Per address: 20 attempts a minute from one address, whichever the accounts.
        for n in range(13):  # with the 7 above, the 20th
            assert try_password(page, url, f"nobody-{n}", "guess")[0] == 401, n
        status, message = try_password(page, url, "boss", PASSWORD)
        assert status == 429 and "Too many sign-in attempts" in message
        assert not signed_in(page, url)
        browser.close()
    log = log_path.read_text()
    assert log.count("failed sign-in for user 'guard'") == 5, log
    assert log.count("too many attempts, password not checked") == 2, log
    assert "refused a sign-in for user 'guard'" in log and "signed in: curator" in log
    assert "signed in: guard" not in log and "signed in: boss" not in log
    assert PASSWORD not in log


@contextmanager
def oidc_dashboard(database: Database, tmp_path: Path, **extra: str) -> Iterator[
        tuple[str, Path, LocalProvider]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with LocalProvider(url) as provider:
        env = dashboard_env(database, DASHBOARD_SECRET_KEY=SECRET_KEY,
                            DASHBOARD_OIDC_DISCOVERY_URL=provider.discovery_url,
                            DASHBOARD_OIDC_CLIENT_ID=CLIENT_ID,
                            DASHBOARD_OIDC_CLIENT_SECRET=CLIENT_SECRET,
                            DASHBOARD_GROUP_SECURITY=GUARDS_GROUP, **extra)
        command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                   "--workers", "1", "--threads", "4", "--pythonpath", str(ROOT),
                   "lmnh.apps.dashboard:wsgi()"]
        with served(command, env, tmp_path, url) as log_path:
            yield url, log_path, provider


def with_provider(browser: Any, url: str, provider: LocalProvider,
                  claims: dict[str, Any]) -> Any:
    provider.claims = claims
    page = browser.new_context().new_page()
    page.goto(url)
    page.click("#login-oidc")
    return page


def test_a_user_taken_out_of_the_providers_group_is_refused_at_the_next_recheck(
        stored: tuple[Database, date], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    database, _ = stored
    with oidc_dashboard(database, tmp_path, DASHBOARD_OIDC_RECHECK_S="3") as (
            url, log_path, provider), sync_playwright() as playwright:
        browser = launch(playwright)
        guard = with_provider(browser, url, provider, {
            "sub": "u-1", "preferred_username": "g.guard", "groups": [GUARDS_GROUP]})
        admin = with_provider(browser, url, provider, {
            "sub": "u-2", "preferred_username": "a.admin", "groups": ["admin"]})
        curator = with_provider(browser, url, provider, {
            "sub": "u-3", "preferred_username": "c.curator", "groups": ["exhibitions"]})
        for page in (guard, admin, curator):
            shown_day(page)
        assert post_from_page(curator, "/_dash-update-component", RATINGS_CALLBACK) == 200
        # Rechecks while the groups stand keep the sessions (several, each refresh token once,
        # while the page's callbacks arrive together).
        wait_until(lambda: all(provider.refreshes.count(s) >= 2 for s in ("u-1", "u-2", "u-3")),
                   60, "two rechecks of each")
        for page in (guard, admin):
            assert post_from_page(page, "/_dash-update-component", REQUESTS_CALLBACK) == 200

        provider.directory["u-1"]["groups"] = ["other-group"]  # out of the guards' group
        provider.revoked.add("u-2")  # the provider no longer refreshes this session
        provider.directory["u-3"]["groups"] = [GUARDS_GROUP]  # moved to security
        wait_until(lambda: post_from_page(
            curator, "/_dash-update-component", RATINGS_CALLBACK) == 403, 30, "the new role")
        assert post_from_page(curator, "/_dash-update-component", REQUESTS_CALLBACK) == 200
        assert signed_in(curator, url)
        for page in (guard, admin):
            wait_until(lambda p=page: post_from_page(
                p, "/_dash-update-component", REQUESTS_CALLBACK) == 401, 30, "the refusal")
            assert not signed_in(page, url)
        browser.close()
    log = log_path.read_text()
    assert log.count("OIDC session of 'g.guard' ended at its recheck: in no dashboard group "
                     "now") == 1, log
    assert log.count("OIDC session of 'a.admin' ended at its recheck: the provider refused "
                     "(invalid_grant)") == 1, log
    assert log.count("OIDC roles of 'c.curator' now security") == 1, log
    assert CLIENT_SECRET not in log


def test_requests_arriving_together_share_one_recheck_per_refresh_token() -> None:
    rechecks = auth.RoleRechecks()
    asked: list[str] = []
    start = threading.Barrier(8)

    def ask(token: str) -> auth.Recheck:
        asked.append(token)
        threading.Event().wait(0.2)  # the provider takes a while
        return auth.Recheck(time.time(), frozenset({"security"}), f"after-{token}")

    answers: list[auth.Recheck] = []

    def request() -> None:
        start.wait()
        answers.append(rechecks.get("token-1", ask)[0])

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert asked == ["token-1"] and len(answers) == 8 and len(set(answers)) == 1
    answer, asked_now = rechecks.get("token-2", ask)
    assert answer.refresh_token == "after-token-2" and asked_now
    assert rechecks.get("token-2", ask) == (answer, False)
    assert asked == ["token-1", "token-2"]


def test_an_id_token_without_a_subject_is_a_refused_sign_in(
        stored: tuple[Database, date], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    database, _ = stored
    with oidc_dashboard(database, tmp_path) as (url, log_path, provider), \
            sync_playwright() as playwright:
        browser = launch(playwright)
        provider.claims = {"preferred_username": "nobody", "groups": [GUARDS_GROUP]}
        page = browser.new_context().new_page()
        page.goto(url)
        with page.expect_response(lambda r: r.url.startswith(url + "auth/callback")) as answer:
            page.click("#login-oidc")
        assert answer.value.status == 401
        assert "did not say who you are" in page.inner_text("#login-error")
        assert not signed_in(page, url)
        browser.close()
        assert provider.tokens_issued == 1
    log = log_path.read_text()
    assert log.count("OIDC sign-in refused: the ID token has no 'sub' claim") == 1, log
    assert "Traceback" not in log and "signed in:" not in log


EXPECTED_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def check_headers(headers: dict[str, str], where: str, https: bool) -> None:
    headers = {k.lower(): v for k, v in headers.items()}
    for name, value in EXPECTED_HEADERS.items():
        assert headers.get(name) == value, (where, name, headers)
    policy = dict(part.strip().split(" ", 1) for part in
                  headers["content-security-policy"].split(";") if part.strip())
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'", where
    assert policy["default-src"] == "'none'", where
    scripts = policy["script-src"].split()
    assert scripts[0] == "'self'" and all(s.startswith("'sha256-") for s in scripts[1:]), where
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts, where
    if https:
        assert headers.get("strict-transport-security") == "max-age=31536000", (where, headers)


def plain_response(url: str, method: str = "GET", body: bytes | None = None) -> Any:
    """An anonymous request as the TLS proxy forwards it (X-Forwarded-Proto: https)."""
    request = urllib.request.Request(url, data=body, method=method, headers={
        "Content-Type": "application/json", "X-Forwarded-Proto": "https"})
    try:
        return urllib.request.build_opener(NoRedirect).open(request, timeout=10)
    except urllib.error.HTTPError as error:
        return error


VIOLATIONS = """window.__violations = [];
document.addEventListener('securitypolicyviolation', e => window.__violations.push(
    e.violatedDirective + ' ' + e.blockedURI));"""


def test_every_response_carries_the_security_headers_and_the_page_runs_under_them(
        stored: tuple[Database, date], users_file: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    database, _ = stored
    env = dashboard_env(database, DASHBOARD_SECRET_KEY=SECRET_KEY,
                        DASHBOARD_PASSWORD_FILE=str(users_file))
    with gunicorn(env, tmp_path) as (url, _), sync_playwright() as playwright:
        for path, method, status in (("", "GET", 302), ("login", "GET", 200),
                                     ("logout", "GET", 200), ("_dash-layout", "GET", 401),
                                     ("_dash-component-suites/x.js", "GET", 401),
                                     ("_dash-update-component", "POST", 401),
                                     ("login", "POST", 400), ("no-such-page", "GET", 401)):
            response = plain_response(url + path, method, b"{}" if method == "POST" else None)
            assert response.status == status, path
            check_headers(dict(response.headers), f"{method} /{path}", https=True)

        browser = launch(playwright)
        context = browser.new_context()
        context.add_init_script(VIOLATIONS)
        page = context.new_page()
        seen: list[Any] = []
        page.on("response", lambda response: seen.append(response))
        page.goto(url)
        page.fill("#username", "boss")
        page.fill("#password", PASSWORD)
        page.click("#login-button")
        shown_day(page)
        # Every part drawn: Dash's renderer, its components and Plotly ran under the policy.
        for graph in ("requests-by-hour", "weekly-ratings", "weekly-requests"):
            page.wait_for_function(f"() => document.querySelector('#{graph} .js-plotly-plot')"
                                   "?.data?.length > 0", timeout=60_000)
        page.wait_for_selector("#rejects tbody tr", timeout=60_000)
        assert page.evaluate("window.__violations") == []
        paths = {r.url.removeprefix(url).split("?")[0] for r in seen}
        assert {"login", "", "_dash-layout", "_dash-dependencies",
                "_dash-update-component"} <= paths, paths
        assert any(p.startswith("_dash-component-suites/") for p in paths), paths
        for response in seen:
            check_headers(response.all_headers(), response.url, https=False)

        # The same page through the proxy's https: HSTS on each of its responses too.
        seen.clear()
        context.set_extra_http_headers({"X-Forwarded-Proto": "https"})
        context.route("**/*", lambda route: route.continue_())  # no cache: every answer anew
        page.reload()
        shown_day(page)
        assert any("_dash-component-suites/" in r.url for r in seen)
        # A refresh callback sent before the header was set may answer after it: each answer is
        # judged by what its own request carried.
        forwarded = [r for r in seen
                     if r.request.all_headers().get("x-forwarded-proto") == "https"]
        assert any("_dash-component-suites/" in r.url for r in forwarded)
        for response in seen:
            check_headers(response.all_headers(), response.url, https=response in forwarded)
        browser.close()


def test_the_policy_allows_dashs_renderer_by_its_hash_only() -> None:
    policy = auth.content_security_policy(["'sha256-abc'"])
    assert policy["script-src"] == ["'self'", "'sha256-abc'"]
    assert json.dumps(policy).count("unsafe-eval") == 0
