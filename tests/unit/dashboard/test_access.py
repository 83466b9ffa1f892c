"""The dashboard's guard as a pure decision: every refusal, and what is let through."""

from __future__ import annotations

from innerloop.dashboard.access import Seen, decide

TOKEN = "s3cret-token"
PORT = 10351
HOST = f"127.0.0.1:{PORT}"


def _decide(**seen: str | None) -> tuple[str, str]:
    method = seen.pop("method", None) or "GET"
    host = seen.pop("host", HOST)
    d = decide(Seen(method=method, host=host, **seen), token=TOKEN, port=PORT)
    return d.verdict, d.reason


def test_the_printed_url_logs_in_and_any_other_token_is_refused() -> None:
    assert _decide(query_token=TOKEN)[0] == "login"
    verdict, reason = _decide(query_token="guess")
    assert verdict == "refuse"
    assert "open the URL `innerloop up` printed" in reason
    assert _decide(method="POST", query_token=TOKEN)[0] == "refuse"  # a token in a form's URL is not a login


def test_without_the_cookie_or_the_token_header_nothing_is_served() -> None:
    verdict, reason = _decide()
    assert verdict == "refuse"
    assert f"http://127.0.0.1:{PORT}/?token=" in reason
    assert _decide(cookie="old-up-token")[0] == "refuse"  # an earlier `up`'s cookie
    assert _decide(cookie=TOKEN)[0] == "allow"
    assert _decide(authorization=f"token {TOKEN}")[0] == "allow"
    assert _decide(authorization=f"Bearer {TOKEN}")[0] == "refuse"


def test_only_the_loopback_names_with_our_port_are_answered() -> None:
    assert _decide(host=f"localhost:{PORT}", cookie=TOKEN)[0] == "allow"
    for host in ("evil.example:10351", "127.0.0.1", f"127.0.0.1:{PORT + 1}", None, f"localhost.evil.example:{PORT}"):
        verdict, reason = _decide(host=host, cookie=TOKEN, query_token=TOKEN)
        assert verdict == "refuse", host
        assert "answers only as http://127.0.0.1:10351/" in reason


def test_an_action_needs_the_dashboards_own_origin() -> None:
    own = f"http://{HOST}"
    assert _decide(method="POST", cookie=TOKEN, origin=own, fetch_site="same-origin")[0] == "allow"
    assert _decide(method="POST", cookie=TOKEN, origin=own)[0] == "allow"
    assert _decide(method="POST", cookie=TOKEN, fetch_site="same-origin")[0] == "allow"
    for origin in ("http://evil.example", "null", f"http://localhost:{PORT}", f"https://{HOST}"):
        verdict, reason = _decide(method="POST", cookie=TOKEN, origin=origin)
        assert verdict == "refuse", origin
        assert "only from the dashboard's own page" in reason
    assert _decide(method="POST", cookie=TOKEN, origin=own, fetch_site="cross-site")[0] == "refuse"
    assert _decide(method="POST", cookie=TOKEN, fetch_site="same-site")[0] == "refuse"


def test_an_action_with_no_origin_at_all_needs_the_token_header() -> None:
    verdict, reason = _decide(method="POST", cookie=TOKEN)
    assert verdict == "refuse"
    assert "Authorization: token" in reason
    assert _decide(method="POST", authorization=f"token {TOKEN}")[0] == "allow"
    # The header does not excuse a foreign origin.
    assert _decide(method="POST", authorization=f"token {TOKEN}", origin="http://evil.example")[0] == "refuse"
