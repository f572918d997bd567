"""The app's own lifecycle (state, error, health), and AppService as a view of it."""

from __future__ import annotations

import pytest

from asyncconsumer import ConfigurationError, ConsumerApp
from asyncconsumer.integrations import AppService, service_for


async def test_idle_then_failed_with_the_error() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id="g")
    assert (app.state, app.error) == ("idle", None)
    idle = app.health()
    assert (idle.live, idle.ready) == (True, False)
    with pytest.raises(ConfigurationError, match="no handlers") as info:
        await app.run()
    assert (app.state, app.error) == ("failed", info.value)
    failed = app.health()
    assert (failed.live, failed.ready, failed.error) == (False, False, repr(info.value))


async def test_app_service_holds_no_state_of_its_own() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id="g")
    service = service_for(app)
    assert isinstance(service, AppService)
    assert service.app is app
    with pytest.raises(ConfigurationError):
        await service.run()
    assert (service.state, service.error) == (app.state, app.error) == ("failed", app.error)
    assert service.health() == app.health()
    assert service_for(app).state == "failed"  # any view of the app sees the same
