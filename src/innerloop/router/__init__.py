"""The intercept router: the one pod an intercept adds (see :mod:`innerloop.router.main`).

A program of its own, shipped in the agent's image (whose entrypoint starts it
with ``route``); it shares :mod:`innerloop.protocol` with the agent and the CLI
and nothing else. Its pure parts (``match``, ``restore``, ``intercepts``) are
imported by the CLI too, so the rules are written once.
"""
