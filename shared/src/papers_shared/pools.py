"""Stopping a process pool at once (ours), for quick runs that spread seeds over processes."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

__all__ = ["stop_pool"]


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """On Ctrl-C or a failure: cancel the queued jobs and terminate the running workers.

    ``pool.shutdown(wait=False, cancel_futures=True)`` alone leaves the running workers computing, and
    once the caller has exited they block for ever on the pool's call queue, still holding the caller's
    stdout/stderr open (a parent reading those pipes never sees their end). Python 3.14 has
    ``terminate_workers()``; before it, the worker processes are reached through ``_processes``.
    """
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
