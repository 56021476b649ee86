"""Import throughput: images per second of `manage.py import_images` on the 10,000 CIFAR-10
`test/` photos, measured until all are searchable; beside it, in the same run, the embedder's
raw throughput on the same images (decoded first, then `get_embedder().embed` in batches of 32,
in this process, before the app starts) and the ratio; and the time from one upload
(`POST /api/images`) until a search with the same image returns its id (median of ~10 fresh,
distinct CIFAR-10 `train/` photos, uploaded one after the other into the imported gallery).

    .venv/bin/python bench/import_throughput.py               # full size: 10,000 images
    .venv/bin/python bench/import_throughput.py --limit 500

The selected `test/` files are written to a temporary folder `<class>/<name>.jpg` (so the
class becomes the category). One upload before the import warms the workers up (model loaded,
index created); it is not counted. In the same run, two baselines import the same files: the
app at the commit whose import the issue quotes (`--then`, a git worktree beside this checkout
sharing its .venv), and this app on the eager path (`--baseline`: INFERENCE=torch, one
embedding process, three views).

`--admin` measures the admin's bulk import instead: the whole `cifar10-jpg.zip` (60,000
files) uploaded through the form at /admin/gallery/importjob/add/ by a staff user, on a freshly
started app (no warm-up: the first batch loads the model), then `progress.json` polled every
second until the job is done and every imported image is searchable. It records images per
second (stored; until searchable), upload -> all searchable, the total wall time, failed and
duplicate counts, and the peak memory (VmHWM) of the gunicorn worker and of each Celery
worker (main process plus prefork children), sampled every second and read again at the end.

    .venv/bin/python bench/import_throughput.py --admin               # full size: 60,000 files
    .venv/bin/python bench/import_throughput.py --admin --limit 500   # the first 500 files"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import re
import secrets
import statistics
import sys
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import harness as h
from PIL import Image

DATASET = "cifar10-jpg.zip"


def pick_test_files(names: list[str], limit: int) -> list[str]:
    """All of them, or `limit` spread evenly over the classes (round robin, sorted)."""
    if not limit or limit >= len(names):
        return names
    by_class = defaultdict(list)
    for name in names:
        by_class[PurePosixPath(name).parts[-2]].append(name)
    columns = [by_class[c] for c in sorted(by_class)]
    picked = []
    for i in range(max(len(c) for c in columns)):
        for column in columns:
            if i < len(column):
                picked.append(column[i])
                if len(picked) == limit:
                    return sorted(picked)
    return sorted(picked)


def raw_embedder_throughput(blobs: list[bytes], batch: int) -> dict:
    """Decode like the embed worker (draft, RGB), then `embed` in batches; each phase timed.
    When the embedder has `embed_gallery` (what the worker calls for gallery items; it may do
    more work than a query embedding, e.g. crop averaging), that is timed as well."""
    from django.conf import settings

    from gallery.embedders import get_embedder

    embedder = get_embedder()
    draft = (2 * settings.EMBEDDER_IMAGE_SIZE,) * 2
    t0 = time.perf_counter()
    pictures = []
    for data in blobs:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", draft)
            pictures.append(im.convert("RGB"))
    decode_s = time.perf_counter() - t0
    n = len(pictures)

    def timed(fn) -> float:
        fn(pictures[:batch])  # warm-up, not timed
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            fn(pictures[start : start + batch])
        return time.perf_counter() - t0

    embed_s = timed(embedder.embed)
    figures = {
        "embedder": embedder.name,
        "torch_threads": settings.TORCH_THREADS,
        "images": n,
        "batch": batch,
        "decode_seconds": round(decode_s, 3),
        "embed_seconds": round(embed_s, 3),
        "embed_images_per_s": round(n / embed_s, 1),
        "decode_embed_images_per_s": round(n / (decode_s + embed_s), 1),
    }
    if hasattr(embedder, "embed_gallery"):
        gallery_s = timed(embedder.embed_gallery)
        figures.update(
            embed_gallery_seconds=round(gallery_s, 3), embed_gallery_images_per_s=round(n / gallery_s, 1)
        )
    return figures


# --- --admin: the admin's bulk import of the whole ZIP ------------------------------------------


def _mib(kb: int) -> str:
    return f"{kb / 1024:.0f} MiB"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s ({int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d})"


def _failure_reasons(app: h.BenchApp, job_id: int, top: int = 8) -> dict:
    """The failed items' errors, counted (read from the run's database in this process)."""
    from collections import Counter

    app.setup_django()
    from gallery.models import ImportItem

    errors = ImportItem.objects.filter(job_id=job_id, state=ImportItem.State.FAILED).values_list(
        "error", flat=True
    )
    return dict(Counter(e[:200] for e in errors).most_common(top))


def _task_counts(log_text: str, total: int, batch: int) -> dict:
    """From the app's log: how many import_job_process tasks ran against how many batches the job
    needs (more means items were queued again: a "stalled" job resumed), how many found
    nothing left to do, retries, and error lines."""
    received = re.findall(r"Task gallery\.tasks\.(\w+)\[[^\]]+\] received", log_text)
    return {
        "import_job_process_needed": math.ceil(total / batch) if batch else None,
        "import_job_process_received": received.count("import_job_process"),
        "import_job_process_noop": len(
            re.findall(r"import_job_process\[[^\]]+\] succeeded in \S+: 0$", log_text, re.M)
        ),
        "index_sync_received": received.count("index_sync"),
        "images_embed_received": received.count("images_embed"),
        "recover_lost_work_received": received.count("recover_lost_work"),
        "retries": len(re.findall(r"\] retry: ", log_text)),
        "error_lines": len(re.findall(r"ERROR/|Traceback \(most recent call last\)", log_text)),
    }


@dataclass
class AdminWatch:
    """What polling progress.json saw, kept between polls: the last progress, when the job was
    done and when all was searchable, the timeline for the results, failed polls, the broker's
    queue lengths, and when the progress last moved (to notice a stall)."""

    t0: float  # the upload request started
    t_up: float  # the upload request ended
    p: dict = field(default_factory=dict)
    t_done: float | None = None
    t_searchable: float | None = None
    timeline: list = field(default_factory=list)
    poll_errors: list[str] = field(default_factory=list)
    failing: int = 0
    queue_max: dict[str, int] = field(default_factory=lambda: {"embed": 0, "index": 0})
    queues: dict[str, int] = field(default_factory=lambda: {"embed": 0, "index": 0})
    last_key: tuple | None = None
    next_print: float = field(init=False)  # the next progress line is due
    next_point: float = field(init=False)  # the next timeline point is due
    last_change: float = field(init=False)  # the progress last moved

    def __post_init__(self) -> None:
        self.next_print = self.next_point = self.last_change = self.t_up

    @property
    def done_s(self) -> float | None:
        """Upload start -> job done (every item stored)."""
        return self.t_done - self.t0 if self.t_done else None

    @property
    def total_s(self) -> float | None:
        """Upload start -> every imported image searchable."""
        return self.t_searchable - self.t0 if self.t_searchable else None

    def poll(self, session: h.Session, app: h.BenchApp, progress_path: str) -> bool:
        """One GET of progress.json into `p`. A failure is counted and logged and the run goes
        on (False); 60 failures in a row end it."""
        try:
            _, self.p = session.json("GET", progress_path)
        except (h.ApiError, OSError, ValueError) as exc:  # counted; the run goes on
            self.failing += 1
            self.poll_errors.append(f"{time.perf_counter() - self.t0:.0f}s {exc}"[:300])
            h.log(f"  progress.json failed ({self.failing} in a row): {str(exc)[:200]}")
            if self.failing >= 60:
                raise RuntimeError(f"progress.json failed 60 times in a row:\n{app.log_tail(20)}") from exc
            session.close()
            time.sleep(1.0)
            return False
        self.failing = 0
        return True

    def sample_queues(self, broker) -> None:
        """Tasks waiting in the broker now, and the most seen (a diagnostic: errors are ignored)."""
        try:  # tasks waiting in the broker (Kombu's Redis lists are named after the queues)
            self.queues = {q: int(broker.llen(q)) for q in self.queue_max}
            self.queue_max = {q: max(self.queue_max[q], self.queues[q]) for q in self.queue_max}
        except Exception:  # a diagnostic only
            pass

    def record(self, now: float, processed: int, timeline_interval: float) -> bool:
        """Note when the job is done and when all is searchable (True: the end) and keep a
        timeline point now and then; a failed or cancelled job ends the run."""
        p = self.p
        if p["state"] == "done" and self.t_done is None:
            self.t_done = now
        if p["state"] in ("failed", "cancelled"):
            raise RuntimeError(f"The import job ended in state {p['state']}: {p.get('error')}")
        finished = p["state"] == "done" and p["searchable"] >= p["imported"]
        if finished:
            self.t_searchable = now
        if now >= self.next_point or finished:
            self.timeline.append([round(now - self.t0, 1), processed, p["searchable"]])
            self.next_point = now + timeline_interval
        return finished

    def log_progress(self, memory: h.MemorySampler, now: float, processed: int) -> None:
        """One progress line: stored and searchable so far with their rates, queued tasks, RSS."""
        p, queues = self.p, self.queues
        cur = memory.current
        mem = "  ".join(
            f"{role} {_mib(cur[role]['rss_kb'])}"
            for role in ("web", "embed_worker", "index_worker")
            if role in cur
        )
        left = p.get("seconds_left")
        h.log(
            f"  [{_fmt_duration(now - self.t0):>8}] {p['percent']:5.1f} %  {p['state']:<7} stored {processed}/{p['total']} "
            f"({p['rate']:.1f} img/s, ~{left if left is not None else '?'} s left)  searchable "
            f"{p['searchable']}/{p['imported']} ({p['searchable'] / (now - self.t0):.1f} img/s)  "
            f"queued tasks {queues['embed']}+{queues['index']}  RSS: {mem}"
        )

    def stalled(self, now: float, processed: int, app: h.BenchApp, stall_timeout: float) -> bool:
        """True, after a warning with the app log's tail, when nothing has moved for
        `stall_timeout` seconds: the run then records what it has instead of waiting forever."""
        p = self.p
        key = (processed, p["searchable"], p["state"])
        if key != self.last_key:
            self.last_key, self.last_change = key, now
        elif now - self.last_change > stall_timeout:
            h.log(
                f"WARNING: no progress for {stall_timeout:.0f} s (state {p['state']}, "
                f"{p['searchable']}/{p['imported']} searchable); giving up waiting. Log tail:\n{app.log_tail(15)}"
            )
            return True
        return False


def _processed(p: dict) -> int:
    """Items the job has dealt with: stored, duplicates and failures."""
    return p["imported"] + p["duplicates"] + p["failed"]


def _create_staff_user(app: h.BenchApp) -> str:
    """A superuser "bench" with a random password, to log in to the admin; returns the password."""
    password = secrets.token_urlsafe(18)
    app.run_manage(
        ["createsuperuser", "--noinput", "--username", "bench", "--email", "b@example.com"],
        quiet=True,
        env={"DJANGO_SUPERUSER_PASSWORD": password},
    )
    return password


def _log_app_processes(roles: dict) -> None:
    """Which processes are measured under which role, and a warning for a role with none."""
    h.log(
        "Processes: "
        + "; ".join(
            f"{role} {', '.join(f'{pid} ({kind})' for pid, _, kind in procs)}"
            for role, procs in sorted(roles.items())
        )
    )
    missing = {"web", "embed_worker", "index_worker"} - {r for r, procs in roles.items() if procs}
    if missing:
        h.log(f"WARNING: no process found for {', '.join(sorted(missing))}: their memory is not measured.")


def _start_app_sampling_memory(app: h.BenchApp, args) -> tuple[float, h.MemorySampler]:
    """Start the app (timed: no warm-up in this mode), tell the Celery pool processes from a -B
    beat, then sample the memory of the app's processes by role; returns (start seconds, sampler)."""
    t = time.perf_counter()
    app.start()
    app_start_s = time.perf_counter() - t
    if not app.identify_pool_children():  # before sampling, so a -B beat gets its own line
        h.log("WARNING: the Celery workers did not report their pool processes: children stay unlabelled.")
    memory = h.MemorySampler(app, interval=args.memory_interval).start()
    _log_app_processes(app.app_processes())
    return app_start_s, memory


def _submit_admin_import(session: h.Session, archive: Path, payload: bytes) -> tuple[int, float, float]:
    """Upload the ZIP through the admin's add form, as a staff user does; returns the job id and
    when the request started and ended. A refused form ends the run with the form's errors."""
    add_path = "/admin/gallery/importjob/add/"
    token = session.csrf_token(add_path)

    h.log(f"Uploading {archive.name} through {add_path} ...")
    t0 = time.perf_counter()
    status, body = session.post_multipart(
        add_path,
        {"csrfmiddlewaretoken": token, "source_kind": "zip", "category": "", "path": ""},
        {"archive": (archive.name, payload, "application/zip")},
    )
    t_up = time.perf_counter()
    m = re.search(r"/admin/gallery/importjob/(\d+)/change/", session.location())
    if status != 302 or not m:
        errors = re.findall(rb'class="errornote">(.*?)<|class="errorlist[^"]*"><li>(.*?)<', body)
        raise RuntimeError(f"The import form was not accepted (HTTP {status}): {errors or body[:500]!r}")
    job_id = int(m[1])
    h.log(
        f"Job {job_id} started; the upload request took {t_up - t0:.2f} s. Polling progress.json every second."
    )
    return job_id, t0, t_up


def _watch_admin_job(
    app: h.BenchApp,
    session: h.Session,
    memory: h.MemorySampler,
    broker,
    job_id: int,
    t0: float,
    t_up: float,
    args,
) -> AdminWatch:
    """Poll progress.json every second, printing a line every --print-interval seconds, until the
    job is done and every imported image is searchable, or nothing moves for --stall-timeout."""
    progress_path = f"/admin/gallery/importjob/{job_id}/progress.json"
    watch = AdminWatch(t0=t0, t_up=t_up)
    while True:
        if not watch.poll(session, app, progress_path):
            continue
        now = time.perf_counter()
        processed = _processed(watch.p)
        watch.sample_queues(broker)
        finished = watch.record(now, processed, args.timeline_interval)
        if now >= watch.next_print or finished:
            watch.log_progress(memory, now, processed)
            watch.next_print = now + args.print_interval
        if finished or watch.stalled(now, processed, app, args.stall_timeout):
            break
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - now)))
    return watch


def _server_job_seconds(p: dict) -> float | None:
    """The job's duration by the server's own clock (started_at -> finished_at), when it has both."""
    if not (p.get("started_at") and p.get("finished_at")):
        return None
    import datetime as dt

    return (
        dt.datetime.fromisoformat(p["finished_at"]) - dt.datetime.fromisoformat(p["started_at"])
    ).total_seconds()


def _admin_figures(
    watch: AdminWatch,
    *,
    files_sent: int,
    zip_bytes: int,
    reasons: dict,
    app_start_s: float,
    upload_s: float,
    server_s: float | None,
    run_wall_s: float,
    mem: dict,
    tasks: dict,
) -> dict:
    """The figures of the --admin JSON line."""
    p, t_up, t_done, t_searchable = watch.p, watch.t_up, watch.t_done, watch.t_searchable
    processed = _processed(p)
    total_s, done_s = watch.total_s, watch.done_s
    return {
        "files": files_sent,
        "zip_bytes": zip_bytes,
        "complete": bool(t_searchable),
        "job": {
            k: p.get(k)
            for k in ("state", "total", "imported", "duplicates", "failed", "pending", "searchable")
        },
        "failure_reasons": reasons,
        "app_start_seconds": round(app_start_s, 2),
        "upload_request_seconds": round(upload_s, 2),
        "upload_start_to_done_seconds": round(done_s, 2) if done_s else None,
        "upload_finish_to_searchable_seconds": round(t_searchable - t_up, 2) if t_searchable else None,
        "done_to_searchable_seconds": round(t_searchable - t_done, 2) if t_searchable and t_done else None,
        "total_seconds": round(total_s, 2) if total_s else None,
        "stored_images_per_s": round(processed / done_s, 2) if done_s else None,
        "searchable_images_per_s": round(p["imported"] / total_s, 2) if total_s else None,
        "server_job_seconds": round(server_s, 2) if server_s else None,
        "server_rate": p.get("rate"),
        "run_wall_seconds": round(run_wall_s, 1),
        "progress_errors": len(watch.poll_errors),
        "progress_error_samples": watch.poll_errors[:10],
        "memory": mem,
        "tasks": tasks,
        "timeline": watch.timeline,  # [seconds since the upload started, stored, searchable]
    }


def _log_admin_summary(
    figures: dict,
    watch: AdminWatch,
    *,
    files_sent: int,
    upload_s: float,
    server_s: float | None,
    run_wall_s: float,
    app_start_s: float,
) -> None:
    """The --admin summary: job counts, failure reasons, the timings and the tasks run."""
    j, p, reasons, poll_errors = figures["job"], watch.p, figures["failure_reasons"], watch.poll_errors
    tasks = figures["tasks"]
    queue_max = tasks["queue_max"]
    done_s, total_s = watch.done_s, watch.total_s
    h.log("\n=== Admin bulk import (CIFAR-10 ZIP through /admin/gallery/importjob/add/) ===")
    h.log(
        f"{files_sent} files: {j['imported']} new, {j['duplicates']} duplicates, {j['failed']} failed, "
        f"{j['pending']} pending; {j['searchable']} searchable; job state {j['state']}"
        + ("" if figures["complete"] else "  ** INCOMPLETE (stalled) **")
    )
    for reason, n in reasons.items():
        h.log(f"  failed x{n}: {reason}")
    if poll_errors:
        h.log(f"progress.json failed {len(poll_errors)} times, e.g. {poll_errors[0]}")
    h.log(f"Upload request (transfer, listing, queueing): {_fmt_duration(upload_s)}")
    h.log(
        f"Stored (job done) {_fmt_duration(done_s)} after the upload started => "
        f"{figures['stored_images_per_s']} img/s (server: {_fmt_duration(server_s)}, {p.get('rate')} img/s)"
    )
    h.log(
        f"All searchable {_fmt_duration(total_s)} after the upload started => {figures['searchable_images_per_s']} img/s"
    )
    h.log(
        f"Upload finished -> all searchable: {_fmt_duration(figures['upload_finish_to_searchable_seconds'])}"
        f"  (job done -> all searchable: {_fmt_duration(figures['done_to_searchable_seconds'])})"
    )
    h.log(
        f"Total wall time: {_fmt_duration(total_s)} (upload start -> all searchable); whole run incl. app start/stop "
        f"{_fmt_duration(run_wall_s)}, app start {app_start_s:.1f} s"
    )
    h.log(
        f"Tasks: import_job_process {tasks['import_job_process_received']} run for {tasks['import_job_process_needed']} batches "
        f"({tasks['import_job_process_noop']} found nothing to do), index_sync {tasks['index_sync_received']}, "
        f"retries {tasks['retries']}, error lines in the app log {tasks['error_lines']}; most tasks queued: "
        f"embed {queue_max['embed']}, index {queue_max['index']}"
    )
    if tasks["import_job_process_received"] > (tasks["import_job_process_needed"] or 0):
        h.log(
            "  NOTE: more import_job_process tasks than batches: pending items were queued again (stall resume)."
        )


def _log_admin_memory(mem: dict, memory_interval: float) -> None:
    """The peak memory of each role, with each of its processes."""
    h.log(
        f"Peak memory (VmHWM; sampled every {memory_interval:g} s, {mem['samples']} samples, and at the end):"
    )
    for role in ("web", "embed_worker", "index_worker", "embed_beat", "index_beat", "web_master", "redis"):
        if role in mem:
            r = mem[role]
            parts = ", ".join(f"{x['kind']} {x['pid']} {x['hwm_mib']:.0f}" for x in r["processes"])
            h.log(
                f"  {role:<13} {r['peak_hwm_mib']:7.0f} MiB (sum; peak sampled RSS {r['peak_rss_mib']:.0f} MiB)  [{parts}]"
            )


def run_admin(args) -> int:
    """--admin: the ZIP (or its first --limit files) through the admin's import form on a fresh
    app, timed until every imported image is searchable, with the processes' peak memory."""
    run_started = time.perf_counter()
    zip_path = h.require_dataset(args.datasets, DATASET)
    with zipfile.ZipFile(zip_path) as zf:
        files = [i.filename for i in zf.infolist() if not i.is_dir()]
    full = not args.limit or args.limit >= len(files)
    with h.BenchApp("import-admin", args) as app:
        app.prepare()
        if full:
            archive = zip_path
        else:  # the first N files in the archive's own order
            archive = h.write_subset_zip(
                zip_path, files[: args.limit], app.tmp / f"cifar10-first-{args.limit}.zip"
            )
        files_sent = len(files) if full else args.limit
        payload = archive.read_bytes()
        zip_bytes = len(payload)
        h.log(f"Admin bulk import of {archive.name}: {files_sent} files, {len(payload) / 1e6:.1f} MB.")

        password = _create_staff_user(app)
        app_start_s, memory = _start_app_sampling_memory(app, args)

        session = h.Session(app.base_url, timeout=max(600.0, args.upload_timeout))
        session.admin_login("bench", password)
        job_id, t0, t_up = _submit_admin_import(session, archive, payload)
        del payload
        upload_s = t_up - t0

        broker = app._redis()
        watch = _watch_admin_job(app, session, memory, broker, job_id, t0, t_up, args)
        session.close()
        memory.stop()
        memory.sample()  # the final read, before the app stops
        reasons = _failure_reasons(app, job_id) if watch.p.get("failed") else {}
        broker.close()
        tasks = _task_counts(
            app.log_path.read_text(errors="replace"),
            watch.p["total"],
            int(app.env.get("EMBED_BATCH_SIZE", 32)),
        )
        tasks["queue_max"] = watch.queue_max
    run_wall_s = time.perf_counter() - run_started

    server_s = _server_job_seconds(watch.p)
    figures = _admin_figures(
        watch,
        files_sent=files_sent,
        zip_bytes=zip_bytes,
        reasons=reasons,
        app_start_s=app_start_s,
        upload_s=upload_s,
        server_s=server_s,
        run_wall_s=run_wall_s,
        mem=memory.summary(),
        tasks=tasks,
    )
    _log_admin_summary(
        figures,
        watch,
        files_sent=files_sent,
        upload_s=upload_s,
        server_s=server_s,
        run_wall_s=run_wall_s,
        app_start_s=app_start_s,
    )
    _log_admin_memory(figures["memory"], args.memory_interval)

    params = {
        "mode": "admin",
        "limit": args.limit or None,
        "dataset": DATASET,
        "poll_s": 1.0,
        "seed": args.seed,
    }
    h.write_result(args.results, "import_throughput", params, figures, full_size=full and figures["complete"])
    return 0 if figures["complete"] else 1


def parse_args(argv=None) -> argparse.Namespace:
    """The command line of both modes (the default import and --admin)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also import the same files on the eager path the issue started from "
        "(INFERENCE=torch, one embedding process of two threads, three views a photo), in the same "
        "run, for the ratio",
    )
    parser.add_argument(
        "--then",
        default=THEN_COMMIT,
        help="also import the same files with the app at this commit (a worktree beside this "
        "checkout), in the same run: 'today' of the issue (default: %(default)s; '' skips)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="import only N test/ images (spread over classes); with --admin, the first N files of the ZIP",
    )
    admin = parser.add_argument_group("--admin mode")
    admin.add_argument(
        "--admin", action="store_true", help="measure the admin bulk import of the whole ZIP instead"
    )
    admin.add_argument(
        "--print-interval",
        type=float,
        default=10,
        help="seconds between progress lines (default: %(default)s)",
    )
    admin.add_argument(
        "--memory-interval",
        type=float,
        default=1.0,
        help="seconds between memory samples (default: %(default)s)",
    )
    admin.add_argument(
        "--timeline-interval",
        type=float,
        default=60,
        help="seconds between the progress points kept in the results (default: %(default)s)",
    )
    admin.add_argument(
        "--stall-timeout",
        type=float,
        default=900,
        help="give up when nothing moves for N seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--uploads", type=int, default=10, help="single uploads timed to searchable (default: 10)"
    )
    parser.add_argument(
        "--batch", type=int, default=32, help="batch size of the raw embedder run (default: 32)"
    )
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between searches while waiting")
    parser.add_argument(
        "--upload-timeout", type=float, default=180, help="give up one upload after N seconds"
    )
    h.common_arguments(parser, redis_db=11)
    return parser.parse_args(argv)


def read_images(args) -> tuple[bool, dict[str, bytes], list[tuple[str, bytes]]]:
    """The selected test/ images and a seeded sample of train/ photos for the single uploads,
    read from the ZIP; also whether all of test/ was selected (a full-size run)."""
    zip_path = h.require_dataset(args.datasets, DATASET)
    test_names = h.zip_image_names(zip_path, "test/")
    if not test_names:
        sys.exit(f"{zip_path} has no test/ images.")
    selected = pick_test_files(test_names, args.limit)
    train_names = h.zip_image_names(zip_path, "train/")
    candidates = random.Random(args.seed).sample(
        train_names, min(len(train_names), 3 * (args.uploads + 1) + 10)
    )
    with zipfile.ZipFile(zip_path) as zf:
        blobs = {name: zf.read(name) for name in selected}
        uploads = [(name, zf.read(name)) for name in candidates]
    h.log(f"{len(selected)} CIFAR-10 test/ images, {args.uploads} timed uploads from train/.")
    return len(selected) == len(test_names), blobs, uploads


def write_class_folders(folder: Path, blobs: dict[str, bytes]) -> Path:
    """The images as files `<class>/<name>.jpg` under `folder`, so that the class becomes the
    category on import; returns `folder`."""
    for name, data in blobs.items():
        parts = PurePosixPath(name).parts
        target = folder.joinpath(*parts[1:])  # <class>/<file>
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


def measure_raw_embedder(blobs: dict[str, bytes], batch: int) -> dict:
    """The embedder's own throughput on the same images, in this process, logged: the yardstick
    the import's rate is compared with."""
    h.log(f"Raw embedder on the same {len(blobs)} images (in-process, batches of {batch}) ...")
    raw = raw_embedder_throughput(list(blobs.values()), batch)
    h.log(
        f"  decode {raw['decode_seconds']:.2f} s, embed {raw['embed_seconds']:.2f} s: "
        f"{raw['embed_images_per_s']:.1f} img/s embedding, {raw['decode_embed_images_per_s']:.1f} img/s "
        "decode+embed"
    )
    if "embed_gallery_images_per_s" in raw:
        h.log(
            f"  embed_gallery (what the worker runs for gallery items): {raw['embed_gallery_seconds']:.2f} s, "
            f"{raw['embed_gallery_images_per_s']:.1f} img/s"
        )
    return raw


def warm_up(api: h.Api, pending: list[tuple[str, bytes]], args) -> None:
    """One upload until searchable, not counted, so that the worker has loaded the model and the
    index exists before anything is timed; takes fresh images off `pending`."""
    warm = None
    while warm is None and pending:  # warm-up: model loaded in the worker, index created
        name, data = pending.pop(0)
        warm = h.upload_until_searchable(api, data, name, poll=args.poll, timeout=args.upload_timeout)
    if warm is None:
        raise RuntimeError("no fresh image for the warm-up upload")
    h.log(f"Warm-up upload searchable after {warm['searchable_s']:.2f} s (not counted).")


def import_figures(imported: dict, files: int, raw: dict) -> dict:
    """The import's figures and its rate over the raw embedder's rates."""
    processed = files - imported.get("refused", 0)
    rate = processed / imported["seconds"]
    figures = {
        "import": {
            "files": files,
            "new": imported.get("new"),
            "duplicates": imported.get("duplicates"),
            "refused": imported.get("refused"),
            "failed": imported.get("failed"),
            "seconds": round(imported["seconds"], 2),
            "stored_seconds": round(imported["stored_seconds"], 2)
            if imported.get("stored_seconds")
            else None,
            "images_per_s": round(rate, 2),
            "store_images_per_s": round(processed / imported["stored_seconds"], 2)
            if imported.get("stored_seconds")
            else None,
        },
        "ratio_import_over_raw_embed": round(rate / raw["embed_images_per_s"], 3),
        "ratio_import_over_raw_decode_embed": round(rate / raw["decode_embed_images_per_s"], 3),
    }
    if "embed_gallery_images_per_s" in raw:
        figures["ratio_import_over_raw_embed_gallery"] = round(rate / raw["embed_gallery_images_per_s"], 3)
    return figures


def time_single_uploads(api: h.Api, pending: list[tuple[str, bytes]], args) -> list[dict]:
    """--uploads fresh images uploaded one after the other, each timed until searchable; an
    image the gallery already holds is skipped."""
    h.log(f"Timing {args.uploads} single uploads until searchable ...")
    timed = []
    while len(timed) < args.uploads and pending:
        name, data = pending.pop(0)
        result = h.upload_until_searchable(api, data, name, poll=args.poll, timeout=args.upload_timeout)
        if result is None:
            continue  # already in the gallery: not fresh
        timed.append(result)
        h.log(
            f"  {name}: upload request {result['upload_s'] * 1000:.0f} ms, searchable {result['searchable_s']:.2f} s"
        )
    return timed


def add_indexed_seconds(timed: list[dict]) -> None:
    """Each timed upload's row created -> indexed, from the database's stamps: the server-side
    time, free of the polling's granularity."""
    from gallery.models import Image as Item

    stamps = {
        pk: (created, done)
        for pk, created, done in Item.objects.filter(pk__in=[r["id"] for r in timed]).values_list(
            "pk", "created_at", "indexed_at"
        )
    }
    for r in timed:
        created, done = stamps.get(r["id"], (None, None))
        r["indexed_s"] = (done - created).total_seconds() if created and done else None


def upload_figures(timed: list[dict], imported: dict, poll: float) -> dict:
    """The single uploads' times to searchable, summarised."""
    searchable = [r["searchable_s"] for r in timed]
    indexed = [r["indexed_s"] for r in timed if r["indexed_s"] is not None]
    return {
        "uploads": len(timed),
        "median_s": round(statistics.median(searchable), 3) if searchable else None,
        "p90_s": round(h.percentile(searchable, 90), 3) if searchable else None,
        "max_s": round(max(searchable), 3) if searchable else None,
        "median_indexed_s": round(statistics.median(indexed), 3) if indexed else None,
        "median_upload_request_ms": round(statistics.median(r["upload_s"] for r in timed) * 1000, 1)
        if timed
        else None,
        "gallery_size": (imported.get("searchable") or 0) + 1,
        "poll_s": poll,
        "each_s": [round(s, 3) for s in searchable],
    }


def log_import_summary(figures: dict, args) -> None:
    """The default mode's summary: the import, the raw embedder, their ratios, the uploads."""
    f, u, raw = figures["import"], figures["upload_to_searchable"], figures["raw_embedder"]
    h.log("\n=== Import throughput (CIFAR-10 test/) ===")
    h.log(
        f"import_images: {f['files']} files ({f['new']} new, {f['duplicates']} duplicates, {f['refused']} refused, "
        f"{f['failed']} failed) searchable after {f['seconds']:.1f} s => {f['images_per_s']:.1f} img/s"
    )
    if f["stored_seconds"]:
        h.log(
            f"  of which storing (decode, re-encode, thumbnail, DB): {f['stored_seconds']:.1f} s "
            f"({f['store_images_per_s']:.1f} img/s)"
        )
    h.log(
        f"Raw embedder: {raw['embed_images_per_s']:.1f} img/s (embed only), "
        f"{raw['decode_embed_images_per_s']:.1f} img/s (decode+embed), batches of {args.batch}"
    )
    if "embed_gallery_images_per_s" in raw:
        h.log(
            f"Raw embed_gallery (the worker's call for gallery items): {raw['embed_gallery_images_per_s']:.1f} img/s"
        )
    h.log(
        f"Ratio import / raw embed: {figures['ratio_import_over_raw_embed']:.2f} "
        f"(/ decode+embed: {figures['ratio_import_over_raw_decode_embed']:.2f})"
    )
    if "ratio_import_over_raw_embed_gallery" in figures:
        h.log(f"Ratio import / raw embed_gallery: {figures['ratio_import_over_raw_embed_gallery']:.2f}")
    if u["median_s"] is not None:
        h.log(
            f"Upload -> searchable ({u['uploads']} uploads into a {u['gallery_size']}-item gallery, polling every "
            f"{args.poll:.2f} s): median {u['median_s']:.2f} s, p90 {u['p90_s']:.2f} s, max {u['max_s']:.2f} s; "
            f"median row created -> indexed (database stamps) {u['median_indexed_s']} s"
        )


# The import path the issue measured (27.4 img/s then): eager PyTorch in one embedding process,
# three forward passes per photo (whole, centre crop, brighter).
EAGER_BASELINE_ENV = {
    "INFERENCE": "torch",
    "EMBED_PROCESSES": "1",
    "EMBED_TORCH_THREADS": "2",
    "EMBEDDER_GALLERY_VIEWS": "3",
}


def eager_baseline_import(args, blobs: dict[str, bytes], fresh: list[tuple[str, bytes]]) -> dict:
    """The same files imported by a fresh app on the eager path, until searchable."""
    with h.BenchApp("import-eager-baseline", args) as app:
        app.env.update(EAGER_BASELINE_ENV)
        return {"env": EAGER_BASELINE_ENV, **baseline_import(app, args, blobs, fresh, "Eager baseline")}


# The code whose import the issue quotes (27.4 img/s, bench/results.jsonl on 2026-11-23): the
# app as it was, not only its inference path, for "x times today" in the same run.
THEN_COMMIT = "b6929b3"


def then_import(args, blobs: dict[str, bytes], fresh: list[tuple[str, bytes]]) -> dict:
    """The same files imported by the app at `args.then` (its own defaults, a checkout beside
    this one), until searchable."""
    with h.checkout_at(args.then) as root, h.BenchApp("import-then", args, root=root) as app:
        return {"commit": args.then, **baseline_import(app, args, blobs, fresh, f"The app at {args.then}")}


def baseline_import(
    app: h.BenchApp, args, blobs: dict[str, bytes], fresh: list[tuple[str, bytes]], what: str
) -> dict:
    """The files imported by a fresh `app` until searchable, after one warm-up upload of a
    `fresh` photo: seconds, img/s, CPU seconds by role."""
    app.prepare()
    folder = write_class_folders(app.tmp / "cifar-test", blobs)
    app.start()
    api = h.Api(app.base_url)
    warm_up(api, list(fresh), args)
    api.close()
    h.log(f"{what}: importing the same {len(blobs)} images ...")
    before = cpu_by_role(app)
    imported = app.import_images(folder)
    processed = len(blobs) - imported.get("refused", 0)
    return {
        "seconds": round(imported["seconds"], 2),
        "images_per_s": round(processed / imported["seconds"], 2),
        "cpu_seconds": cpu_spent(before, cpu_by_role(app)),
    }


def cpu_by_role(app: h.BenchApp) -> dict[str, float]:
    """CPU seconds so far of each role's processes, and of this process's finished children
    (`import_images` runs as one)."""
    spent = {
        role: sum(h.proc_cpu_seconds(pid) or 0.0 for pid, _, _ in procs)
        for role, procs in app.app_processes().items()
    }
    times = os.times()
    spent["import_command"] = times.children_user + times.children_system
    return spent


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: round(after[role] - before.get(role, 0.0), 1) for role in after}


def log_cpu(imported: dict) -> None:
    """Where the import's CPU went: two cores give 2 s of CPU per second of import."""
    cpu = imported["cpu_seconds"]
    total = sum(cpu.values())
    h.log(
        f"  CPU seconds: {total:.0f} in {imported['seconds']:.0f} s "
        f"({total / max(imported['seconds'], 1e-9):.2f} cores busy): "
        + ", ".join(f"{role} {v:.0f}" for role, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.5)
    )


def run_import(args) -> int:
    """The default mode: the raw embedder, then import_images of the test/ images until all are
    searchable, then single uploads timed until searchable; one JSON line."""
    all_test, blobs, uploads = read_images(args)
    figures: dict = {}
    with h.BenchApp("import-throughput", args) as app:
        app.prepare()
        folder = write_class_folders(app.tmp / "cifar-test", blobs)

        app.setup_django()
        figures["raw_embedder"] = measure_raw_embedder(blobs, args.batch)

        app.start()
        api = h.Api(app.base_url)
        pending = list(uploads)
        warm_up(api, pending, args)

        h.log(f"Importing {len(blobs)} images with import_images (until searchable) ...")
        before = cpu_by_role(app)
        imported = app.import_images(folder)
        figures.update(import_figures(imported, len(blobs), figures["raw_embedder"]))
        figures["import"]["cpu_seconds"] = cpu_spent(before, cpu_by_role(app))
        log_cpu(figures["import"])

        timed = time_single_uploads(api, pending, args)
        api.close()
        # Server side, from the database: row created -> status indexed (no polling involved).
        add_indexed_seconds(timed)

    figures["upload_to_searchable"] = upload_figures(timed, imported, args.poll)
    if args.baseline:
        figures["eager_baseline"] = eager_baseline_import(args, blobs, uploads)
        figures["ratio_import_over_eager_baseline"] = round(
            figures["import"]["images_per_s"] / figures["eager_baseline"]["images_per_s"], 2
        )
    if args.then:
        figures["then"] = then_import(args, blobs, uploads)
        figures["ratio_import_over_then"] = round(
            figures["import"]["images_per_s"] / figures["then"]["images_per_s"], 2
        )
    log_import_summary(figures, args)
    if args.then:
        t = figures["then"]
        h.log(
            f"The app at {t['commit']} (the import the issue quotes): {t['images_per_s']:.1f} img/s; "
            f"this import is {figures['ratio_import_over_then']:.2f}x it (issue 16: >= 3.5x today)"
        )
    if args.baseline:
        b = figures["eager_baseline"]
        h.log(
            f"Eager baseline (INFERENCE=torch, one embedding process, three views): {b['images_per_s']:.1f} img/s; "
            f"this import is {figures['ratio_import_over_eager_baseline']:.2f}x it (issue 16: >= 3.5x, >= 100 img/s)"
        )

    params = {
        "limit": args.limit or None,
        "uploads": args.uploads,
        "batch": args.batch,
        "poll": args.poll,
        "seed": args.seed,
        "dataset": DATASET,
        "then": args.then or None,
    }
    h.write_result(
        args.results,
        "import_throughput",
        params,
        figures,
        full_size=all_test and args.uploads >= 10,
    )
    return 0


def main(argv=None) -> int:
    """--admin measures the admin's bulk import; without it, import_images and single uploads."""
    args = parse_args(argv)
    h.install_signal_handlers()
    if args.admin:
        return run_admin(args)
    return run_import(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("Interrupted.")
