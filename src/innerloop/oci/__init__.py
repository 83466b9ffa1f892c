"""Container image archives (docker-save format), written deterministically."""
