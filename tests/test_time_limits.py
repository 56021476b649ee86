"""Time limits by queue, as a real prefork worker (the pool that enforces them) applies them:
the web's work is bounded, long runs (training, evaluation, activation) are not, and index
rebuilds get hours."""

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
