"""From a public model name to a Plan: which deployments to try, in which order (``router``),
knowing each deployment's load, latency, quota and circuit (``health``), shared between
replicas through Redis when configured (``shared_circuits``, imported only then)."""

from gateway.routing.health import CircuitState, DeploymentHealth, HealthBoard, Ticket
from gateway.routing.router import ModelPolicy, Plan, Router, weighted_order

__all__ = [
    "CircuitState",
    "DeploymentHealth",
    "HealthBoard",
    "ModelPolicy",
    "Plan",
    "Router",
    "Ticket",
    "weighted_order",
]
