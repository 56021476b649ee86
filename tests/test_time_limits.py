"""Time limits by queue, as a real prefork worker (the pool that enforces them) applies them:
the web's work is bounded, long runs (training, evaluation, activation) are not, and index
rebuilds get hours."""

import functools
import os
import re
import socket
import time

from searchsite.celery import app
from tests.conftest import start_worker, stop_worker


def _limits(lines: list[str]) -> dict[str, tuple[str, str]]:
    """'gallery.tasks.x [soft_time_limit=300 time_limit=360]' -> {'x': ('300', '360')}."""
    found = {}
    for line in lines:
        name = line.split(" ")[0].rsplit(".", 1)[-1]
        soft = re.search(r"soft_time_limit=(\S+?)[ \]]", line)
        hard = re.search(r" time_limit=(\S+?)[ \]]", line)
        found[name] = (soft.group(1) if soft else "None", hard.group(1) if hard else "None")
    return found


def test_a_prefork_worker_bounds_web_work_and_lets_training_run_for_hours(
    django_db_setup, redis_url, session_dirs
):
    log = session_dirs["base"] / "prefork-worker.log"
    proc = start_worker(redis_url, session_dirs, log, "limits", pool="prefork")
    try:
        name = f"limits-{os.getpid()}@{socket.gethostname()}"
        with app.connection_for_write(redis_url) as conn:
            inspect = app.control.inspect(destination=[name], timeout=5, connection=conn)
            deadline = time.monotonic() + 30
            registered = None
            while not registered and time.monotonic() < deadline:
                registered = inspect.registered("soft_time_limit", "time_limit")
            stats = inspect.stats()
        assert registered, "the worker did not answer"
        limits = _limits(registered[name])
        assert limits["images_embed"] == ("300", "360")
        assert limits["import_job_process"] == ("300", "360")
        assert limits["index_sync"] == (str(6 * 3600), str(6 * 3600 + 300))
        for long_run in ("model_train", "model_evaluate", "model_activate"):
            assert limits[long_run] == ("None", "None"), long_run
        assert stats[name]["pool"]["timeouts"] == [0, 0]  # no pool-wide limit behind them
    finally:
        stop_worker(proc)


def _pool_processes(log_text: str, task: str) -> list[str]:
    """The pool process that ran each finished `task`, in order ('ForkPoolWorker-1', ...)."""
    return re.findall(rf"INFO/(ForkPoolWorker-\d+)\] Task gallery\.tasks\.{task}\[\S+\] succeeded", log_text)


def _run_in_this_worker(send, log, task: str, count: int) -> list[str]:
    """Send `task` until this worker has run it `count` times (the session's worker, when one
    runs, takes some of them from the same queue)."""
    deadline = time.monotonic() + 90
    while len(_pool_processes(log.read_text(), task)) < count and time.monotonic() < deadline:
        ran = len(_pool_processes(log.read_text(), task))
        send()
        wait_until = time.monotonic() + 3
        while len(_pool_processes(log.read_text(), task)) == ran and time.monotonic() < wait_until:
            time.sleep(0.1)
    return _pool_processes(log.read_text(), task)[:count]


def test_the_index_worker_keeps_its_process_under_a_memory_limit_other_workers_obey(
    transactional_db, redis_url, session_dirs
):
    """The index worker holds the index: a per-child memory limit would replace its process
    after a task, and the next process would load the whole index again."""
    from gallery import queues, tasks

    tiny = {"CELERY_WORKER_MAX_MEMORY_PER_CHILD": "1000"}  # 1 MB: every process is over it
    for queue, task in ((queues.INDEX, tasks.index_sync), (queues.EMBED, tasks.images_backfill)):
        # A queue of this test's own beside the real one: the session's worker (when one
        # runs) consumes the real queue too, and would take some of the tasks.
        own = f"{queue}-memory-test"
        log = session_dirs["base"] / f"memory-limit-{queue}.log"
        proc = start_worker(
            redis_url,
            session_dirs,
            log,
            f"mem-{queue}",
            pool="prefork",
            queues_consumed=(queue, own),
            extra_env=tiny,
        )
        try:
            send = functools.partial(task.apply_async, queue=own)
            ran_in = _run_in_this_worker(send, log, task.name.rsplit(".", 1)[1], 3)
        finally:
            stop_worker(proc)
        assert len(ran_in) == 3, log.read_text()[-3000:]
        if queue == queues.INDEX:
            assert ran_in == ["ForkPoolWorker-1"] * 3  # one process, its index kept
        else:
            assert len(set(ran_in)) == 3  # a new process after each task: the limit applies
