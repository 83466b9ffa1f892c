"""Debuggers: a service's process run under its language's debugger, reached through a forward.

``languages.py`` is the pure core (what each language's launch is, which
language a service is), with one module per language (``python.py``,
``node.py``, ``jvm.py``, ``go.py``); ``services.py`` says which services
debug and where their debug ports land on this machine; ``editor.py`` merges
the editor's attach configurations into ``.vscode/launch.json``; ``tools.py``
is what the agent image carries for them (debugpy, dlv) under
``/.innerloop/tools/``.
"""
