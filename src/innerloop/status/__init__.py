"""What a running `innerloop up` knows, in one store, and the local API that serves it.

``store.py``: services' status, logs, the timeline, alerts and the actions
`up` offers (plain data, one owner, many readers); ``api.py``: the unix-socket
API on it, which the CLI's ``status``/``logs``, the dashboard and editors read.
Below ``engine/`` (which owns the store while `up` runs), so ``sync/``,
``alerts/`` and ``dashboard/`` report into it and read it without importing
the engine.
"""
