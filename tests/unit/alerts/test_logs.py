"""App errors assembled from log lines as real runtimes print them."""

from __future__ import annotations

from innerloop.alerts.logs import AppError, ErrorScanner, app_error_alert, error_level

FLASK = """\
[2026-12-02 01:30:00,123] ERROR in app: Exception on /checkout [GET]
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/flask/app.py", line 1473, in wsgi_app
    response = self.full_dispatch_request()
  File "/app/app.py", line 12, in checkout
    return str(total / count)
           ~~~~~~^~~~~~~
ZeroDivisionError: division by zero
10.244.0.1 - - [02/Dec/2026 01:30:00] "GET /checkout HTTP/1.1" 500 -"""

NODE = """\
/app/src/index.js:10
    throw new TypeError('rating is not a number');
    ^

TypeError: rating is not a number
    at average (/app/src/index.js:10:11)
    at Layer.handle [as handle_request] (/app/node_modules/express/lib/router/layer.js:95:5)

Node.js v18.19.0"""

GO = """\
panic: runtime error: index out of range [3] with length 3

goroutine 1 [running]:
main.stock(...)
\t/src/main.go:21
main.main()
\t/src/main.go:30 +0x1d
exit status 2"""


def _scan(text: str, scanner: ErrorScanner | None = None) -> list[AppError]:
    scanner = scanner or ErrorScanner()
    found = [e for line in text.splitlines() for e in scanner.feed(line)]
    return found + scanner.flush()


def test_a_flask_error_line_and_its_traceback_are_one_error_summarised_by_the_last_line() -> None:
    (error,) = _scan(FLASK)
    assert error.kind == "traceback"
    assert error.summary == "ZeroDivisionError: division by zero"
    assert error.lines[0].endswith("Exception on /checkout [GET]")
    assert error.lines[-1] == "ZeroDivisionError: division by zero"


def test_a_traceback_is_complete_at_its_exception_line_without_waiting() -> None:
    scanner = ErrorScanner()
    lines = FLASK.splitlines()[1:8]
    found = [e for line in lines for e in scanner.feed(line)]
    assert [e.summary for e in found] == ["ZeroDivisionError: division by zero"]
    assert not scanner.pending


def test_a_node_stack_trace() -> None:
    (error,) = _scan(NODE)
    assert error.kind == "stack"
    assert error.summary == "TypeError: rating is not a number"
    assert len(error.lines) == 3


def test_a_go_panic_with_its_goroutine_dump() -> None:
    (error,) = _scan(GO)
    assert error.kind == "panic"
    assert error.summary == "panic: runtime error: index out of range [3] with length 3"
    assert "\t/src/main.go:21" in error.lines


def test_a_stack_at_the_end_of_the_log_ends_on_flush() -> None:
    scanner = ErrorScanner()
    assert scanner.feed("Error: connect ECONNREFUSED 10.0.0.1:5432") == []
    assert scanner.feed("    at TCPConnectWrap.afterConnect (node:net:1555:16)") == []
    assert scanner.pending
    (error,) = scanner.flush()
    assert error.summary == "Error: connect ECONNREFUSED 10.0.0.1:5432"


def test_error_level_lines_in_text_logfmt_and_json() -> None:
    assert error_level("2026-12-02 01:30:00 ERROR payment declined")
    assert error_level('time=2026-12-02T01:30:00Z level=error msg="db down"')
    assert error_level('{"time": "x", "level": "error", "msg": "db down"}')
    assert error_level('{"severity": "ERROR", "message": "db down"}')
    assert not error_level("INFO no errors so far")
    assert not error_level("GET /errors 200")
    assert not error_level('level=info msg="error budget fine"')


def test_plain_lines_raise_nothing() -> None:
    assert _scan("starting\nlistening on :8080\nGET / 200") == []


def test_patterns_add_lines_and_ignore_drops_lines_and_summaries() -> None:
    scanner = ErrorScanner(errors=[r"^payment declined"], ignore=[r"DeprecationWarning", r"KeyboardInterrupt"])
    found = _scan("payment declined for order 7\nERROR DeprecationWarning: old API", scanner)
    assert [(e.kind, e.summary) for e in found] == [("pattern", "payment declined for order 7")]
    interrupted = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nKeyboardInterrupt'
    assert _scan(interrupted, ErrorScanner(ignore=["KeyboardInterrupt"])) == []


def test_builtin_off_keeps_only_the_patterns() -> None:
    scanner = ErrorScanner(errors=["^oops"], builtin=False)
    assert [e.summary for e in _scan(FLASK + "\noops", scanner)] == ["oops"]


def test_an_error_becomes_one_alert_per_service_with_its_lines() -> None:
    (error,) = _scan(FLASK)
    alert = app_error_alert(error, service="orders", pod="orders-1")
    assert alert.key == "app-error/orders"
    assert alert.cause == "a Python traceback in the logs: ZeroDivisionError: division by zero"
    assert "alerts.ignore" in alert.hint
    assert alert.details == error.lines


def test_a_restart_of_gunicorn_is_no_error_but_a_killed_worker_is() -> None:
    """Each sync restarts the app: gunicorn then logs its workers' SIGTERM at ERROR level (a false alert per save,
    seen on the bookshop's backend). A worker killed with SIGKILL (a timeout, OOM) is still an error."""
    scanner = ErrorScanner()
    assert scanner.feed("[2026-12-02 02:37:36 +0000] [7] [ERROR] Worker (pid:8) was sent SIGTERM!") == []
    assert scanner.flush() == []
    scanner.feed("[2026-12-02 02:37:36 +0000] [7] [ERROR] Worker (pid:9) was sent SIGKILL! Perhaps out of memory?")
    (error,) = scanner.flush()
    assert "SIGKILL" in error.summary
