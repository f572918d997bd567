"""The machinery behind :class:`~asyncconsumer.ConsumerApp` and :class:`~asyncconsumer.Consumer`.

- ``_offsets``: what has been processed and committed, per partition, and the commit call;
- ``_rebalance``: the adapter that turns the client's rebalance callbacks into ours,
  so that no error raised in them is swallowed;
- ``_lanes``: one long-lived worker per assigned partition that runs its records
  in offset order (the place where ordering modes plug in);
- ``_liveness``: the event-loop lag and fetch-loop watch;
- ``_engine``: the task group that owns the fetch, commit and liveness tasks and
  the lanes, and the rebalance and stop sequences;
- ``_together``: an app's engine and share runtime run in one task group.
"""
