"""Debuggers: a service's process run under its language's debugger, reached through a forward.

``languages.py`` is the pure core (what each language's launch is, which
language a service is); ``launch_json.py`` merges the editor's attach
configurations into ``.vscode/launch.json``; ``tools.py`` is what the agent
image carries for them (debugpy, dlv) under ``/.innerloop/tools/``.
"""
