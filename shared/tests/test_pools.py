import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from papers_shared.pools import stop_pool


def test_stop_pool_terminates_running_workers_and_cancels_queued_jobs():
    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(time.sleep, 60) for _ in range(4)]  # two run, two wait in the queue
    deadline = time.monotonic() + 60
    while not any(f.running() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.05)
    procs = list(pool._processes.values())
    assert procs and any(p.is_alive() for p in procs)
    t0 = time.monotonic()
    stop_pool(pool)
    assert time.monotonic() - t0 < 10
    assert not any(p.is_alive() for p in procs)  # shutdown(wait=False) alone leaves them sleeping
    assert futures[-1].cancelled()
