"""Several worker processes, one ``/metrics``: where their values meet.

With ``PROMETHEUS_MULTIPROC_DIR`` set, every worker writes its values there and any of them
adds all up when scraped. This module must not import prometheus_client: the variable has to
be set before a worker imports it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.config import GatewayConfig

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def metrics_directory(config: GatewayConfig, workers: int) -> Iterator[None]:
    """For several workers: a fresh ``PROMETHEUS_MULTIPROC_DIR`` for this run (removed after),
    so ``/metrics`` adds up every worker's values. A directory set by the operator is used as
    it is (empty it between runs). Must run before any worker imports prometheus_client."""
    if workers <= 1 or not config.metrics.enabled or os.environ.get(MULTIPROC_ENV):
        yield
        return
    path = tempfile.mkdtemp(prefix="llm-gateway-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
