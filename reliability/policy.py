"""Scenario 8's failure policy, shared by the member app and the checker.

A record's fate depends on its key and sequence number only, so every member (and
every incarnation) treats it the same way and the checker knows what must happen:

- ``"poison"``: its value cannot be decoded (the producer writes ``\\xff`` + seq,
  not JSON); it goes to the dead-letter topic at once (``dlq.attempts`` 0);
- ``"transient"`` (10 %): the handler fails on its first attempt in a process and
  succeeds on the retry: it ends handled, never dead-lettered;
- ``"permanent"`` (10 %): the handler fails on every attempt: after ``ATTEMPTS`` it
  goes to the dead-letter topic (``dlq.attempts`` equals ``ATTEMPTS``), never handled;
- ``"ok"``: handled on the first attempt.
"""

from __future__ import annotations

from typing import Literal

Fate = Literal["ok", "transient", "permanent", "poison"]

ATTEMPTS = 3  # Retry(attempts=...) of the handler: the first call and two retries
BACKOFF_S = 0.005  # Backoff.constant(...) between attempts
POISON_EVERY = 100  # the producer makes every 100th record a poison pill (1 %)
POISON_PREFIX = b"\xff"


class TransientFailure(Exception):
    """Raised on a transient record's first attempt."""


class PermanentFailure(Exception):
    """Raised on every attempt of a permanent record."""


def fate(key: str, seq: int) -> Fate:
    """What the handler does with the record (a decodable one)."""
    bucket = (seq * 7 + int(key.lstrip("k") or 0) * 3) % 10
    if bucket == 0:
        return "transient"
    if bucket == 1:
        return "permanent"
    return "ok"
