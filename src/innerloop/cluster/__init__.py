"""The bundled single-node Kubernetes: built from the registries, run by pid.

Floor 1: knows nothing of innerloop's dev loop. ``node`` orchestrates;
``build`` compiles binaries; ``images`` makes the cluster's own images;
``pki`` and ``components`` render certificates and configuration; ``daemons``
and ``host`` are the edges that touch processes and the machine.
"""
