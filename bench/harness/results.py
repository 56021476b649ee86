"""Paths, logging, the common command-line arguments and the results file (bench/results.jsonl).

Importing this module puts PROJECT_ROOT on sys.path, so that the benches can import `gallery.*`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = PROJECT_ROOT / "bench"
RESULTS_FILE = BENCH_DIR / "results.jsonl"
DEFAULT_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
if str(PROJECT_ROOT) not in sys.path:  # benches import shared helpers from the project
    sys.path.insert(0, str(PROJECT_ROOT))
DEFAULT_REDIS = "redis://127.0.0.1:6379"


def log(msg: str = "") -> None:
    print(msg, flush=True)


def common_arguments(parser: argparse.ArgumentParser, *, redis_db: int) -> None:
    parser.add_argument(
        "--datasets",
        type=Path,
        default=DEFAULT_DATASETS,
        help=f"folder holding the shared datasets (default: {DEFAULT_DATASETS})",
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis server (default: %(default)s)")
    parser.add_argument(
        "--redis-db",
        type=int,
        default=redis_db,
        help="Redis database number for this run, flushed before and after (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=0, help="port for the app (default: a free one)")
    parser.add_argument("--seed", type=int, default=20241122, help="random seed (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary VAR_DIR (for debugging)")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="JSON-lines file to append to")


def git_commit() -> tuple[str | None, bool | None]:
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return commit, dirty


# The code a run measures is the code it started with: the commit is read when the bench
# starts (a commit made while a long run works must not be credited with its figures).
STARTED_AT_COMMIT = git_commit()


def write_result(path: Path, script: str, params: dict, figures: dict, *, full_size: bool) -> dict:
    """Append one JSON line: script, timestamp, git commit (at the start), machine,
    parameters, figures."""
    commit, dirty = STARTED_AT_COMMIT
    now = git_commit()
    if now != STARTED_AT_COMMIT:
        dirty = True  # the tree changed during the run
    record = {
        "script": script,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": dirty,
        "full_size": full_size,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
        },
        "params": params,
        "figures": figures,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
    log(f"\nAppended the results to {path}")
    return record
