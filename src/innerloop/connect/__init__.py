"""The remote context for a local process: the target pod's env, ConfigMaps and Secrets (DNS next)."""
