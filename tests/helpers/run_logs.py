"""A run log for tests that read what a run logged without a tracking store: each metric's latest value and every
artifact's bytes (`cl.tracking.NullRunLog` otherwise)."""
from __future__ import annotations

from cl.tracking import NullRunLog


class LatestValuesLog(NullRunLog):
    def __init__(self):
        self.metrics: dict[str, float] = {}
        self.artifacts: dict[str, bytes] = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_artifact(self, path, data):
        self.artifacts[path] = data
