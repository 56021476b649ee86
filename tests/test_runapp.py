"""`manage.py runapp` (what `make run` starts): web + workers + a broker, all real processes.
When Redis is not reachable it starts a private redis-server, and without one it falls back
to the embedded (filesystem) broker; either way an upload becomes searchable, and Ctrl-C
stops every process."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.images import make_image_bytes

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_runapp(env: dict[str, str], log_path: Path, port: int) -> subprocess.Popen:
    """`manage.py runapp` in its own session (stopped as a group), its output in `log_path`."""
    with open(log_path, "w") as log:  # the child writes through its own copy
        return subprocess.Popen(
            [sys.executable, "manage.py", "runapp", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_app(tmp_path, extra_env):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_", "REDIS_URL"))}
    env.update(VAR_DIR=str(tmp_path / "var"), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", **extra_env)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    proc = spawn_runapp(env, tmp_path / "runapp.log", port)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if requests.get(base + "/", timeout=10).status_code == 200:
                return proc, base
        except requests.RequestException:
            time.sleep(0.5)
    stop_app(proc, tmp_path, signal.SIGTERM)
    pytest.fail("runapp did not serve the home page:\n" + (tmp_path / "runapp.log").read_text()[-3000:])


def stop_app(proc, tmp_path, sig=signal.SIGINT):
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    assert proc.wait(timeout=40) is not None
    return (tmp_path / "runapp.log").read_text()


def upload_and_wait(base):
    data = make_image_bytes(77)
    created = requests.post(
        base + "/api/images", files={"image": ("x.jpg", data)}, data={"title": "x"}, timeout=30
    )
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline:
        status = requests.get(f"{base}/api/images/{image_id}", timeout=10).json()["status"]
        if status != "processing":
            break
        time.sleep(0.5)
    assert status == "indexed"
    hits = requests.post(base + "/api/search", files={"image": ("q.jpg", data)}, timeout=30).json()["results"]
    assert hits[0]["id"] == image_id


def children_of(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_starts_a_private_redis_when_none_is_reachable(tmp_path):
    if not any((Path(d) / "redis-server").exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("redis-server is not installed")
    proc, base = start_app(tmp_path, {})
    children = children_of(proc.pid)
    try:
        upload_and_wait(base)
    finally:
        log = stop_app(proc, tmp_path)
    assert "Redis is not reachable" in log and "private redis-server" in log
    time.sleep(1)
    assert not [c for c in children if Path(f"/proc/{c}").exists()], "child processes survived Ctrl-C"


def test_falls_back_to_the_embedded_broker_and_stops_on_sigterm(tmp_path):
    proc, base = start_app(tmp_path, {"REDIS_SERVER": ""})  # as if no redis-server were installed
    children = children_of(proc.pid)
    try:
        upload_and_wait(base)
    finally:
        log = stop_app(proc, tmp_path, signal.SIGTERM)
    assert "Broker: embedded" in log
    time.sleep(1)
    assert not [c for c in children if Path(f"/proc/{c}").exists()], "child processes survived SIGTERM"
    assert not (ROOT / "control").exists()
