"""backend: the book catalogue, a Flask app served by gunicorn; each book's rating comes from reviews."""

import json
import logging
import os
import socket
import urllib.request

from flask import Flask, jsonify, request

REVIEWS_URL = os.environ.get("REVIEWS_URL", "http://reviews:8080")
BOOKS = [
    {"id": 1, "title": "The Phoenix Project", "stock": 3},
    {"id": 2, "title": "Site Reliability Engineering", "stock": 5},
    {"id": 3, "title": "Kubernetes Patterns", "stock": 0},
]
GREETING = "hello from backend"
# Routing headers are passed on, so personal intercepts further down still match.
ROUTING_HEADERS = ("baggage", "x-innerloop-user")

app = Flask(__name__)


class _NoProbes(logging.Filter):
    """Probes every 2 s would drown the interesting lines of gunicorn's access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/healthz" not in record.getMessage()


logging.getLogger("gunicorn.access").addFilter(_NoProbes())


def fetch_reviews(headers: dict[str, str]) -> dict:
    req = urllib.request.Request(f"{REVIEWS_URL}/reviews", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.get("/books")
def books():
    forwarded = {k: v for k, v in request.headers.items() if k.lower() in ROUTING_HEADERS}
    try:
        reviews = fetch_reviews(forwarded)
        ratings = {r["bookId"]: r["rating"] for r in reviews.get("reviews", [])}
    except (OSError, ValueError) as err:
        # Deployed without reviews (or reviews is down): the catalogue still answers, and says so.
        reviews = {"service": "reviews", "error": f"reviews unreachable at {REVIEWS_URL}: {err}"}
        ratings = {}
    catalogue = [{**b, "rating": ratings.get(b["id"])} for b in BOOKS]
    return jsonify(service="backend", pod=socket.gethostname(), greeting=GREETING, books=catalogue, via=[reviews])


@app.errorhandler(404)
def no_route(_err):
    return {"error": f"no route {request.path}"}, 404


if __name__ == "__main__":
    # Outside the container (`innerloop intercept backend`): Flask's own server, no gunicorn needed.
    port = int(os.environ.get("PORT", "8080"))
    print(f"backend listening on :{port}, reviews at {REVIEWS_URL}", flush=True)
    app.run(host="127.0.0.1", port=port, threaded=True)
