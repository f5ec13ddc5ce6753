"""Execution backends: synchronous, a local Dask cluster started and stopped by the stage, or an existing
Dask scheduler. Work is partitioned so that every partition computes exactly what the synchronous path
computes (tiling: whole location blocks; embedding: whole batches), and results are gathered in a fixed
order, so outputs are bitwise identical whatever the execution mode. Failed tasks (a worker that died) are
retried by Dask.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Sequence

from .errors import ConfigError


@contextlib.contextmanager
def dask_client(cfg) -> Iterator[object | None]:
    """Yield a ``distributed.Client`` for ``cfg`` (a ``ComputeConfig``), or None when synchronous."""
    if cfg.scheduler == "synchronous":
        yield None
        return
    from distributed import Client, LocalCluster

    if cfg.scheduler == "local":
        with LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(cfg.scheduler, timeout="10s")
    except OSError as exc:
        raise ConfigError("compute.scheduler", "a reachable Dask scheduler address", f"{cfg.scheduler} ({exc})",
                          "start the scheduler, fix the address, or use synchronous / local") from None
    with client:
        yield client


def n_threads(n_jobs: int | None) -> int:
    """Threads for ``n_jobs`` (-1: every core this process may use, -2: all but one, ...; None or 0: 1)."""
    if not n_jobs:
        return 1
    if n_jobs > 0:
        return int(n_jobs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores + 1 + n_jobs)


def thread_map(func: Callable, items: Sequence, threads: int) -> list:
    """``[func(item) for item in items]`` on up to ``threads`` threads (in this thread when one suffices);
    results in input order. For work that releases the GIL (compiled kernels, LAPACK, scikit-learn trees)."""
    threads = min(threads, len(items))
    if threads <= 1:
        return [func(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(func, items))


def run_ordered(client, func, items, retries: int = 3, progress: str | None = None, threads: int = 1,
                cost=None) -> list:
    """``[func(*item) for item in items]``, on the cluster when ``client`` is given; results in input order.

    ``progress``: a label for a progress bar over the items (tqdm), or None for none. ``threads``: without a
    client, run that many items at once on threads (for tasks that release the GIL and whose results do not
    depend on which thread runs them). ``cost``: an estimate per item; costlier items start first (on threads
    and, as Dask priorities, on a cluster), so that a long task does not start last and leave the other
    workers idle. The results are the same whatever the order.
    """
    from tqdm import tqdm

    order = list(range(len(items))) if cost is None else sorted(range(len(items)), key=lambda i: -cost[i])
    bar = tqdm(total=len(items), desc=progress, unit="task", disable=progress is None)
    with bar:
        if client is None:
            def one(i):
                result = func(*items[i])
                bar.update()
                return result

            done = dict(zip(order, thread_map(one, order, threads)))
            return [done[i] for i in range(len(items))]
        from distributed import as_completed

        rank = {i: len(items) - r for r, i in enumerate(order)}  # higher runs first
        futures = [client.submit(func, *item, pure=False, retries=retries, priority=rank[i])
                   for i, item in enumerate(items)]
        for _ in as_completed(futures):
            bar.update()
        return client.gather(futures)
