"""Images without a Docker daemon: deterministic layers, archives, loading."""
