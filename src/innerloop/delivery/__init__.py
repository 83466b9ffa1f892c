"""How built images reach the cluster: facts about it, the choice of path, the paths themselves.

Floor 2 (beside ``builders/`` and ``deploy/``): ``facts.py`` reads the
kubeconfig, nodes and KEP-1755 ConfigMap; ``choice.py`` (pure) picks a path
the way Tilt and Skaffold do and says why; ``names.py`` (pure) is Skaffold's
default-repo rewriting; ``skopeo.py`` (pure) its command lines and errors;
``deliver.py`` runs a path for one image and returns the reference pods use.
"""

from innerloop.delivery.choice import (
    ClusterKind,
    DeliveryPlan,
    Loader,
    LoaderCommand,
    Method,
    NoDelivery,
    Recognition,
    RegistryTarget,
    plan_delivery,
    recognise,
)
from innerloop.delivery.deliver import (
    BundledImport,
    Delivery,
    DeliveryError,
    LoaderRun,
    RegistryPush,
    delivery_for,
)
from innerloop.delivery.facts import (
    ClusterFacts,
    DefaultRepo,
    LocalRegistryHosting,
    NodeFacts,
    gather_facts,
    resolve_default_repo,
)
from innerloop.delivery.names import rewrite

__all__ = [
    "BundledImport",
    "ClusterFacts",
    "ClusterKind",
    "DefaultRepo",
    "Delivery",
    "DeliveryError",
    "DeliveryPlan",
    "Loader",
    "LoaderCommand",
    "LoaderRun",
    "LocalRegistryHosting",
    "Method",
    "NoDelivery",
    "NodeFacts",
    "Recognition",
    "RegistryPush",
    "RegistryTarget",
    "delivery_for",
    "gather_facts",
    "plan_delivery",
    "recognise",
    "resolve_default_repo",
    "rewrite",
]
