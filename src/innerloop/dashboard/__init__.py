"""The web dashboard `innerloop up` serves on 127.0.0.1: services, logs, timeline, alerts and actions, live.

``server.py`` is the edge (aiohttp: the built page, ``/events``, the local
API under ``/api``); ``access.py`` the pure guard (token, cookie, Host,
same-origin actions); ``static/`` the built front-end (web/dashboard/).
"""

from innerloop.dashboard.server import DEFAULT_PORT, Dashboard, DashboardError, Listen, listen, serve

__all__ = ["DEFAULT_PORT", "Dashboard", "DashboardError", "Listen", "listen", "serve"]
