"""Run the work units of :func:`ichd.preprocessing.cache.build_cache` on a Dask cluster (``ichd[dask]``).

``ichd preprocess INPUTS --out CACHE --scheduler tcp://HOST:PORT`` (an existing cluster) or ``--scheduler local`` /
``--dask-workers N`` (a :class:`dask.distributed.LocalCluster` started and closed here). Everything else is the
process-pool path's: the driver plans the units (a header-only pass groups DICOM files into series, see
:func:`~ichd.preprocessing.cache.expand_inputs`), each unit is one task running the very function the pool runs
(:func:`~ichd.preprocessing.cache._process_input`: decode, preprocess, write ``series/<scan_id>.npy`` atomically),
and the driver records each unit in the manifest as it completes, so a killed run resumes without redoing the
recorded units. Only a bounded window of units is in flight (twice the cluster's threads), so the driver and the
scheduler hold a few task descriptions at a time, not the whole dataset's.

With a remote cluster the workers read the inputs and write the cache themselves: the inputs and ``--out`` must be
on a filesystem every worker mounts at the same path, and the workers need the same ichd installed.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from ichd.errors import DependencyError, IchdError, InputError
from ichd.preprocessing.cache import FLUSH_SECONDS, CacheInput, _init_worker, _process_input
from ichd.utils.logging import get_logger

log = get_logger(__name__)

#: ``--scheduler`` value that starts a LocalCluster.
LOCAL = "local"

Result = tuple[list[dict[str, Any]], list[dict[str, Any]]]


def resolve_target(scheduler: str | None, dask_workers: int | None, workers: int | None) -> tuple[str, int] | None:
    """Where ``build_cache`` runs: ``None`` (the process pool: neither option given), ``("local", n)`` (a
    LocalCluster of ``n`` one-thread worker processes: ``dask_workers``, else ``workers``, else ``min(4, CPUs)``)
    or ``(address, 0)`` (an existing scheduler). :class:`InputError` for contradictory options."""
    if scheduler is None and dask_workers is None:
        return None
    if dask_workers is not None and dask_workers < 1:
        raise InputError(f"--dask-workers must be at least 1, got {dask_workers}")
    scheduler = (scheduler or LOCAL).strip()
    if scheduler.lower() == LOCAL:
        n = dask_workers or (workers if workers and workers > 0 else min(4, os.cpu_count() or 1))
        return LOCAL, int(n)
    if dask_workers is not None:
        raise InputError(f"--dask-workers starts a local cluster; it cannot be combined with --scheduler {scheduler}",
                         hint="start workers on the cluster with `dask worker ADDRESS`, or use --scheduler local")
    if not scheduler:
        raise InputError("--scheduler is empty", hint="pass tcp://HOST:PORT or local")
    return scheduler, 0


def preprocess_unit(item: CacheInput, out: str, cfg_dict: dict[str, Any], skip_scan_ids: frozenset[str]) -> Result:
    """The Dask task: the process pool's unit of work (one torch thread, one DICOM decoder: the cluster already
    runs one task per thread)."""
    _init_worker()
    return _process_input(item, out, cfg_dict, skip_scan_ids, 1)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise DependencyError("--scheduler/--dask-workers need dask.distributed, which is not installed",
                              hint="pip install 'ichd[dask]' (or: pip install 'dask[distributed]')") from e
    return distributed


def _skip_for(item: CacheInput, known: frozenset[str]) -> frozenset[str]:
    """The cached scan ids ``item`` could produce (what its task needs to skip; all of them when unknown), so a
    task carries a few bytes, not the id of every series cached so far."""
    if item.kind == "dicom" and item.series:  # one planned series: its scan id is its SeriesInstanceUID
        return known & {item.series.rsplit("/", 1)[-1]}
    if item.kind == "ctich" and item.patient is not None:
        from ichd.io.images import ctich_scan_id

        return known & {ctich_scan_id(item.patient)}
    return known


def _connect(stack: ExitStack, address: str, n_workers: int) -> Any:
    from distributed import Client, LocalCluster

    if address == LOCAL:
        # ":0": any free port for the scheduler's HTTP server (dashboard when bokeh is installed), not 8787
        cluster = stack.enter_context(LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                                   dashboard_address=":0"))
        return stack.enter_context(Client(cluster))
    try:
        return stack.enter_context(Client(address))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot connect to the Dask scheduler {address!r} ({e})",
                         hint="start one with `dask scheduler` and workers with `dask worker tcp://HOST:PORT`, "
                              "or use --scheduler local") from e


def _check_workers_see(client: Any, folder: str) -> None:
    seen = client.run(os.path.isdir, folder)
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        raise InputError(f"{len(blind)} of {len(seen)} Dask worker(s) cannot see the cache folder {folder} "
                         f"(e.g. {blind[0]})",
                         hint="--out and the inputs must be on a filesystem every worker mounts at the same path")


def run_units(todo: Sequence[CacheInput], out: str, cfg_dict: dict[str, Any], known: Callable[[], frozenset[str]],
              record: Callable[[CacheInput, Result], None], fail: Callable[[CacheInput, BaseException], None], *,
              address: str, n_workers: int = 0) -> None:
    """Run ``todo`` on Dask (``address``: a scheduler address or ``"local"`` with ``n_workers`` processes) and call
    ``record(item, result)`` or ``fail(item, error)`` in the driver as each unit completes (``as_completed``).

    ``out`` must be absolute. ``known()`` gives the scan ids already cached, which the workers skip as in the pool
    (each task gets those it could produce). The window of tasks in flight is twice the cluster's threads, counted
    again every :data:`FLUSH_SECONDS`. A unit whose error is an :class:`IchdError`, ``OSError``, ``ValueError`` or
    ``KilledWorker`` (it killed its worker, e.g. out of memory, too often) is failed and the others go on; any other
    error cancels the rest and propagates.
    """
    _distributed()  # a DependencyError naming the extra when it is missing
    from distributed import KilledWorker, as_completed

    with ExitStack() as stack:
        client = _connect(stack, address, n_workers)
        _check_workers_see(client, out)
        threads = sum(client.nthreads().values())
        log.info("preprocessing %d unit(s) on Dask %s (%d worker thread(s) now)", len(todo),
                 client.scheduler.address, threads)
        if threads == 0:
            log.warning("the Dask scheduler %s has no workers yet; tasks wait until some join", address)
        queue = deque(todo)
        pending: dict[Any, CacheInput] = {}
        done = as_completed()
        last_count = time.monotonic()

        def refill() -> None:
            nonlocal threads, last_count
            if time.monotonic() - last_count >= FLUSH_SECONDS:  # workers join and leave
                last_count = time.monotonic()
                threads = sum(client.nthreads().values())
            cached = known() if queue else frozenset()
            while queue and len(pending) < max(2, 2 * threads):
                item = queue.popleft()
                fut = client.submit(preprocess_unit, item, out, cfg_dict, _skip_for(item, cached), pure=False)
                pending[fut] = item
                done.add(fut)

        try:
            refill()
            for fut in done:
                item = pending.pop(fut)
                try:
                    result = fut.result()
                except (IchdError, OSError, ValueError, KilledWorker) as e:
                    fail(item, e)
                else:
                    record(item, result)
                fut.release()
                refill()
        finally:
            if pending:  # interrupted: the recorded units stay recorded, the rest is redone on the next run
                client.cancel(list(pending))
