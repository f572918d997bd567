"""What the web integrations share: probe answers, independent of the framework."""

from __future__ import annotations

from typing import Any

from .._app import ConsumerApp
from .._health import HealthBounds

__all__ = ["Probes"]


class Probes:
    """Answers of ``/health/live``, ``/health/ready`` and ``/metrics`` for one app."""

    def __init__(self, app: ConsumerApp, bounds: HealthBounds, *, metrics: bool) -> None:
        self.app = app
        self.bounds = bounds
        self._metrics: Any = None
        if metrics:
            from ..metrics import instrument  # needs the `prometheus` extra

            self._metrics = instrument(app)

    def live(self) -> tuple[int, dict[str, Any]]:
        health = self.app.health(self.bounds)
        return (200 if health.live else 503), health.as_dict()

    def ready(self) -> tuple[int, dict[str, Any]]:
        health = self.app.health(self.bounds)
        return (200 if health.ready else 503), health.as_dict()

    def metrics(self) -> tuple[bytes, str]:
        from ..metrics import CONTENT_TYPE

        return self._metrics.render(), CONTENT_TYPE

    @property
    def has_metrics(self) -> bool:
        return self._metrics is not None
