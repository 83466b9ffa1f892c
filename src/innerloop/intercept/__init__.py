"""Intercepts: a Service's cluster traffic to a developer's local process, and back."""
