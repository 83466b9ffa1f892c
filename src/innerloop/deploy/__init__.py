"""Render manifests for a cluster (image pins now; kustomize, Helm and dev-mode patches next)."""
