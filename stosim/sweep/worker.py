"""Setup of the worker processes of a sweep's own ``LocalCluster`` (imported only where dask is).

Ctrl-C in a terminal sends SIGINT to the whole foreground process group, the LocalCluster's worker
processes included. The sweep itself handles it: it cancels its tasks, saves the finished points and
closes the cluster at once (:func:`stop_workers_now`). So its workers ignore SIGINT: none prints a
``KeyboardInterrupt`` traceback or dies before the cluster closes it. Workers of an external scheduler
are left as they are (a Ctrl-C of the sweep cancels its tasks there).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from typing import Any

from distributed import WorkerPlugin

__all__ = ["IgnoreInterrupt", "stop_workers_now"]


class IgnoreInterrupt(WorkerPlugin):
    """A worker plugin: the worker process ignores SIGINT from its start (its cluster closes it)."""

    name = "stosim-ignore-interrupt"

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # where a worker process runs its loop
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_workers_now(cluster: Any, grace_s: float = 0.5) -> None:
    """Stop the worker processes of a LocalCluster within about ``grace_s`` (then they are killed).

    A worker inside a point's computation does not stop for a cancelled task, and the cluster's own close
    waits 4 s for each before killing it; after Ctrl-C the points still running are given up anyway. The
    nannies are closed (not only their processes killed), so none starts a new worker process.
    """

    async def close_all() -> None:
        await asyncio.gather(
            *(nanny.close(timeout=grace_s) for nanny in list(cluster.workers.values())), return_exceptions=True
        )

    with contextlib.suppress(Exception):  # the cluster's own close follows and reports what is wrong
        cluster.sync(close_all)
