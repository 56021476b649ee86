"""Shared harness for the benchmarks in bench/: an isolated copy of the app, a small HTTP
client, statistics and the results file.

Every run gets a fresh temporary VAR_DIR (SQLite database, media, index) and its own Redis
database number (flushed before and after), so it never touches the developer's data. The app
is `manage.py runapp` in its own process group; it is always stopped in a `finally` (also on
Ctrl-C, SIGTERM or an error), and so is every process it started.

Only the standard library is used for HTTP (`requests` is not a dependency of the project).

Modules, each importing only those listed before it:

    results   paths (PROJECT_ROOT, put on sys.path), log, common arguments, the results file
    datasets  the shared datasets: require_dataset, the images of a ZIP, a subset ZIP
    pages     queries as a page shows them: a photo fitted into 1024x768, noise, JPEG q90
    stats     percentile, duration summaries, run_concurrent
    procs     signal handlers, free ports, the /proc process table, stopping a process group,
              a private PostgreSQL with pgvector (pgserver)
    http      multipart encoding, Api (the JSON API), Session (cookies, CSRF, admin pages)
    memory    MemorySampler (peak memory of the app's processes by role)
    app       BenchApp (the throw-away app instance, of this checkout or another: checkout_at),
              venv_python

The scripts use it as `import harness as h` (bench/ is on sys.path when they run)."""

from __future__ import annotations

from .app import BenchApp, checkout_at, venv_python
from .datasets import IMAGE_EXTENSIONS, pixel_groups, require_dataset, write_subset_zip, zip_image_names
from .http import Api, ApiError, Session, content_type, encode_multipart, upload_until_searchable
from .memory import MemorySampler, pss_by_role
from .procs import (
    descendants,
    free_port,
    install_signal_handlers,
    proc_alive,
    proc_argv,
    proc_cmd_name,
    proc_cpu_seconds,
    proc_memory_kb,
    proc_pss_kb,
    proc_table,
    start_pgserver,
    stop_process_group,
)
from .results import (
    BENCH_DIR,
    DEFAULT_DATASETS,
    DEFAULT_REDIS,
    PROJECT_ROOT,
    RESULTS_FILE,
    common_arguments,
    git_commit,
    log,
    write_result,
)
from .stats import fmt_summary, percentile, run_concurrent, summarize_ms

__all__ = [
    "BENCH_DIR",
    "DEFAULT_DATASETS",
    "DEFAULT_REDIS",
    "IMAGE_EXTENSIONS",
    "PROJECT_ROOT",
    "RESULTS_FILE",
    "Api",
    "ApiError",
    "BenchApp",
    "MemorySampler",
    "Session",
    "checkout_at",
    "common_arguments",
    "content_type",
    "descendants",
    "encode_multipart",
    "fmt_summary",
    "free_port",
    "git_commit",
    "install_signal_handlers",
    "log",
    "percentile",
    "pixel_groups",
    "proc_alive",
    "proc_argv",
    "proc_cmd_name",
    "proc_cpu_seconds",
    "proc_memory_kb",
    "proc_pss_kb",
    "proc_table",
    "pss_by_role",
    "require_dataset",
    "run_concurrent",
    "start_pgserver",
    "stop_process_group",
    "summarize_ms",
    "upload_until_searchable",
    "venv_python",
    "write_result",
    "write_subset_zip",
    "zip_image_names",
]
