"""Run a :class:`~asyncconsumer.ConsumerApp` inside a web service.

- :mod:`asyncconsumer.integrations.fastapi`: FastAPI / Starlette lifespan and an
  ``APIRouter`` with ``/health/live``, ``/health/ready`` and ``/metrics``;
- :mod:`asyncconsumer.integrations.aiohttp`: the same through ``cleanup_ctx`` and routes;
- :mod:`asyncconsumer.integrations.opentelemetry`: a consumer span per record.

Each module imports its framework; importing ``asyncconsumer`` imports none of them.
"""

from .._health import Check, Health, HealthBounds, State
from .._service import AppService, service_for

__all__ = ["AppService", "Check", "Health", "HealthBounds", "State", "service_for"]
