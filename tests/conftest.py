"""Every test: a connection left open fails the test that left it, naming where it was opened.

``filterwarnings = error`` turns an unclosed socket's ``ResourceWarning`` into a failure,
but the warning is raised when the garbage collector frees the transport: a transport
still open when its test's event loop closed sits in a reference cycle until some later
collection, so the failure landed in whatever test ran next on that worker (twice, in
CI, a share-consumer test that had nothing to do with it). Here each test that opened a
socket ends with a collection, after its event loop closed, so the warning is raised in
the test that leaked; and each asyncio socket transport remembers the stack that created
it, printed to stderr (shown in the test's report) when one is freed while still open.
"""

from __future__ import annotations

import gc
import sys
import traceback
from asyncio import selector_events
from collections.abc import Iterator
from typing import Any

import pytest

_transport_class: Any = getattr(selector_events, "_SelectorTransport")  # noqa: B009
_original_init = _transport_class.__init__
_original_del = _transport_class.__del__


_opened = 0  # transports created so far


def _remembering_init(self: Any, *args: Any, **kwargs: Any) -> None:
    global _opened
    _original_init(self, *args, **kwargs)
    _opened += 1
    self._opened_at = traceback.extract_stack(limit=30)[:-1]


def _reporting_del(self: Any, *args: Any, **kwargs: Any) -> None:
    if getattr(self, "_sock", None) is not None:
        opened = "".join(traceback.format_list(getattr(self, "_opened_at", [])))
        sys.stderr.write(f"{self!r} freed while open; it was opened at:\n{opened}")
    _original_del(self, *args, **kwargs)


_transport_class.__init__ = _remembering_init
_transport_class.__del__ = _reporting_del


@pytest.fixture(autouse=True)
def _collect_garbage_after_the_loop_closed() -> Iterator[None]:
    # Set up before the test's event loop (autouse fixtures come first), so finalised
    # after it closed; pytest collects the unraisable exceptions of the teardown after this.
    opened_before = _opened
    yield
    if _opened != opened_before:  # a collection costs ~0.1 s: only after tests with sockets
        gc.collect()
