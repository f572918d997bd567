"""Fault-injection reliability suite (issue 12): members in subprocesses, a
confluent-kafka producer, a checker that proves properties from the logs.

Not collected by ``make test``; run it with ``make chaos``."""
