"""A new pool process of an embedding worker (at start, or replacing one past its memory
limit) loads the served models before an upload reaches it, as a real prefork worker runs."""

import re
import time

from gallery import queues, services, tasks
from tests.conftest import start_worker, stop_worker
from tests.images import make_image_bytes

WARMED = re.compile(r"INFO/(ForkPoolWorker-\d+)\] embedders warmed in")
RAN = re.compile(
    r"INFO/(ForkPoolWorker-\d+)\] Task gallery\.tasks\.images_embed\[\S+\] succeeded in ([\d.]+)s"
)


def _wait_for_lines(log, pattern: re.Pattern[str], count: int, timeout: float = 180) -> list[tuple[str, ...]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.findall(log.read_text())
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{count} lines like {pattern.pattern!r} not seen:\n{log.read_text()[-3000:]}")


def test_each_new_embedding_process_is_ready_before_the_upload_it_takes(
    transactional_db, redis_url, session_dirs, clean_index
):
    own = f"{queues.EMBED}-warm-test"  # this test's own queue: the session's worker takes none
    log = session_dirs["base"] / "embed-warm.log"
    tiny = {"CELERY_WORKER_MAX_MEMORY_PER_CHILD": "1000"}  # 1 MB: a new process after every task
    proc = start_worker(
        redis_url,
        session_dirs,
        log,
        "warm",
        pool="prefork",
        queues_consumed=(queues.EMBED, own),
        extra_env=tiny,
    )
    try:
        images = [
            services.image_create(data=make_image_bytes(700 + n), title=f"warm {n}", enqueue=False)[0]
            for n in range(2)
        ]
        durations = []
        for n, image in enumerate(images):
            _wait_for_lines(log, WARMED, n + 1)  # this process has loaded the models
            tasks.images_embed.apply_async(([image.pk],), queue=own)
            durations.append(_wait_for_lines(log, RAN, n + 1)[n])
    finally:
        stop_worker(proc)
    ran_in = [process for process, _ in durations]
    assert len(set(ran_in)) == 2, durations  # the second upload reached a new process
    # Loading the models takes 2-6 s here; embedding one photo with them loaded, a few ms.
    assert all(float(seconds) < 1.5 for _, seconds in durations), durations
    for image in images:
        image.refresh_from_db()
        assert image.embeddings.exists(), image.status
