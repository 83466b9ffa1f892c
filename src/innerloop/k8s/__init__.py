"""Access to a Kubernetes cluster: REST (lightkube), exec and port-forward streams (aiohttp websockets)."""
