"""Memory of the app's processes, sampled from /proc in a thread."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from .procs import proc_cmd_name, proc_memory_kb, proc_pss_kb

if TYPE_CHECKING:
    from .app import BenchApp


class MemorySampler:
    """Samples VmHWM and VmRSS (/proc/<pid>/status) of the app's processes by role every
    `interval` seconds in a thread (call `sample()` once more at the end, before the app stops).

    Per role: `peak_hwm_kb` is the largest sum, at one sample, of the VmHWM of the role's live
    processes (a Celery worker's main process plus its prefork children; the gunicorn worker
    processes); VmHWM only grows, so this is the end-of-run sum unless a process was replaced,
    in which case the replaced process's peak is still kept. It counts pages shared between a
    parent and its forked child twice, so it bounds the real peak from above. `peak_rss_kb` is
    the largest sampled sum of VmRSS (a lower bound between samples)."""

    def __init__(self, app: BenchApp, interval: float = 1.0) -> None:
        self.app, self.interval = app, interval
        self.lock = threading.Lock()
        self.processes: dict[tuple[int, str], dict] = {}
        self.peak_hwm: dict[str, int] = {}
        self.peak_rss: dict[str, int] = {}
        self.current: dict[str, dict] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, dict]:
        """One sample; returns role -> {"hwm_kb", "rss_kb", "processes", "largest_rss_kb"} of the
        live processes (sums, and the largest one's resident memory)."""
        roles = self.app.app_processes()
        current = {}
        with self.lock:
            for role, procs in roles.items():
                hwm = rss = alive = largest = 0
                for pid, start, kind in procs:
                    mem = proc_memory_kb(pid)
                    if mem is None:
                        continue
                    alive += 1
                    hwm += mem["VmHWM"]
                    rss += mem.get("VmRSS", 0)
                    largest = max(largest, mem.get("VmRSS", 0))
                    rec = self.processes.setdefault(
                        (pid, start), {"role": role, "pid": pid, "kind": kind, "cmd": proc_cmd_name(pid)}
                    )
                    rec["hwm_kb"] = max(rec.get("hwm_kb", 0), mem["VmHWM"])
                    rec["rss_kb_max"] = max(rec.get("rss_kb_max", 0), mem.get("VmRSS", 0))
                if alive:
                    self.peak_hwm[role] = max(self.peak_hwm.get(role, 0), hwm)
                    self.peak_rss[role] = max(self.peak_rss.get(role, 0), rss)
                    current[role] = {
                        "hwm_kb": hwm,
                        "rss_kb": rss,
                        "processes": alive,
                        "largest_rss_kb": largest,
                    }
            self.current = current
            self.samples += 1
        return current

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a process vanishing mid-read: next sample
                self.sample()

    def start(self) -> MemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        """role -> peak figures in MiB, with every process seen."""
        mib = lambda kb: round(kb / 1024, 1)  # noqa: E731
        with self.lock:
            out = {}
            for role in sorted(self.peak_hwm):
                procs = [p for p in self.processes.values() if p["role"] == role]
                out[role] = {
                    "peak_hwm_mib": mib(self.peak_hwm[role]),
                    "peak_rss_mib": mib(self.peak_rss.get(role, 0)),
                    "max_process_hwm_mib": mib(max((p["hwm_kb"] for p in procs), default=0)),
                    "processes": [
                        {"pid": p["pid"], "kind": p["kind"], "hwm_mib": mib(p["hwm_kb"]), "cmd": p["cmd"]}
                        for p in sorted(procs, key=lambda p: (p["kind"] != "main", p["pid"]))
                    ],
                }
            out["samples"] = self.samples
            out["interval_s"] = self.interval
            return out


def pss_by_role(app: BenchApp) -> dict[str, float]:
    """What the app's processes hold together now, in MiB, by role and in total (`total`): the
    sum of their proportional set sizes, which counts a page shared by n processes once (the
    sum of resident sizes would count a mapped file n times)."""
    out: dict[str, float] = {}
    for role, procs in app.app_processes().items():
        kb = sum(proc_pss_kb(pid) or 0 for pid, _, _ in procs)
        out[role] = round(kb / 1024, 1)
    out["total"] = round(sum(out.values()), 1)
    return out
