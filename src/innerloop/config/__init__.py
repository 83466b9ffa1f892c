"""``innerloop.yaml``: what it may say (models), reading it (positions in errors), its JSON Schema.

Floor 1: imports nothing from innerloop's other packages; ``innerloop up``
(floor 3) and the CLI read configs through this package's public names.
"""

from innerloop.config.load import (
    CONFIG_FILE,
    ConfigError,
    ConfigProblem,
    find_config,
    load_config,
    locate_problems,
    parse_config,
)
from innerloop.config.model import (
    ChangeStep,
    Helm,
    Image,
    InconsistentProject,
    Manifests,
    PortForward,
    Problem,
    Project,
    Service,
    SyncRule,
)
from innerloop.config.schema import json_schema, json_schema_text

__all__ = [
    "CONFIG_FILE",
    "ChangeStep",
    "ConfigError",
    "ConfigProblem",
    "Helm",
    "Image",
    "InconsistentProject",
    "Manifests",
    "PortForward",
    "Problem",
    "Project",
    "Service",
    "SyncRule",
    "find_config",
    "json_schema",
    "json_schema_text",
    "load_config",
    "locate_problems",
    "parse_config",
]
