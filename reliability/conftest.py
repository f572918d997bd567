"""The three-node cluster fixture and the ``chaos_quick`` marker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asyncconsumer.testing import ApacheKafka


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos_quick: the short subset of the reliability scenarios (make chaos-quick)"
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[ApacheKafka]:
    """Three Apache Kafka nodes (broker + controller each) for a module's scenarios."""
    with ApacheKafka(nodes=3) as kafka:
        yield kafka
