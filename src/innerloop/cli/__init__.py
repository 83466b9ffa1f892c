"""The ``innerloop`` command line."""
