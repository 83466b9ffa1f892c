"""The in-pod agent: PID 1 of the app container in dev mode.

It supervises the app (restarts without the container ever being recreated),
applies sync batches to the synced directories and serves the CLI over one
multiplexed connection (see ``innerloop.protocol``). Standard library only:
it is copied into arbitrary app images next to whatever Python they run.
"""
