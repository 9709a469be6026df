"""Benchmark: the LoRA Studio under a class: 30 students each following a running job's SSE stream and polling the
jobs list, against a job store of 1,000 jobs, on a real Waitress server on 127.0.0.1.

    flock /tmp/devserver-lora-heavy.lock .venv/bin/python bench/studio.py      (about a minute on 2 cores)

Phases, same server process, same 30 clients:
  baseline  every client polls a plain Flask route returning a constant, once per POLL_S
  studio    every client follows the running job's events (SSE) and polls GET /api/lora/jobs once per POLL_S
Printed: p95 latency of the list and of event delivery (from the line written to events.jsonl to the client holding
it) and the server's CPU seconds per client per minute, each as a ratio to the baseline route. Then the cost of
building the list of 1,000 jobs on the server: the Studio's index (job.json re-read only when it changed, events read
from the last offset) vs reading every job's job.json and events.jsonl on each poll.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devserver_lora.train.events import ProgressEvent, StateEvent, event_to_dict  # noqa: E402

STUDENTS = 30
JOBS = 1000
POLL_S = 1.0
PHASE_S = 20.0
EVENT_EVERY_S = 0.25
RUNNING_ID = "running-job"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_store(jobs_dir: Path) -> None:
    """1,000 synthetic jobs of 30 students and a teacher: job.json as the job store writes it and an events.jsonl of
    200 progress lines each (a finished run); one job is running."""
    now = time.time()
    for i in range(JOBS):
        job_id = RUNNING_ID if i == 0 else f"job-{i:04d}"
        folder = jobs_dir / job_id
        folder.mkdir(parents=True)
        state = "running" if i == 0 else ("done", "failed", "cancelled")[i % 3]
        info = {"id": job_id, "state": state, "created": now - i * 60, "updated": now - i * 60,
                "output_name": f"lora_{i}", "family": "sd35_large", "preset": "fotostudio", "backend": "kohya",
                "owner": f"s{i % STUDENTS:02d}" if i % 10 else "teacher"}
        (folder / "job.json").write_text(json.dumps(info), encoding="utf-8")
        lines = [json.dumps(event_to_dict(StateEvent(state="created")))]
        if i:
            lines += [json.dumps(event_to_dict(ProgressEvent(step=s, total_steps=200, loss=0.1, eta_s=1.0)))
                      for s in range(1, 201)]
        (folder / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for sub in ("logs", "outputs", "work"):
        (jobs_dir / RUNNING_ID / sub).mkdir()


def serve(home: Path, port: int) -> None:
    """The server process: the Studio plus the baseline route, on Waitress."""
    from waitress import serve as waitress_serve

    from devserver_lora.studio import create_app

    app = create_app(data_dir=home, queue_poll_s=0, detect_gpu=False)  # the served defaults otherwise

    @app.get("/bench/constant")
    def constant() -> Any:
        return {"ok": True}

    waitress_serve(app, host="127.0.0.1", port=port, threads=STUDENTS * 2 + 8, channel_timeout=60, _quiet=True)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 20 else max(values)


class Writer(threading.Thread):
    """The running job's trainer: appends a progress line every EVENT_EVERY_S and remembers when."""

    def __init__(self, events: Path) -> None:
        super().__init__(daemon=True)
        self.path = events
        self.written: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        step = 0
        while not self.stop.wait(EVENT_EVERY_S):
            step += 1
            line = json.dumps(event_to_dict(ProgressEvent(step=step, total_steps=100000, loss=0.1))) + "\n"
            with self.path.open("a", encoding="utf-8") as f:
                self.written[step] = time.monotonic()
                f.write(line)
                f.flush()


def poller(url: str, headers: dict[str, str], until: float, out: list[float], start_after: float) -> None:
    time.sleep(start_after)  # students do not press reload in the same millisecond: spread over one period
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < until:
            t0 = time.monotonic()
            r = http.get(url, headers=headers)
            r.raise_for_status()
            out.append(time.monotonic() - t0)
            time.sleep(max(0.0, POLL_S - (time.monotonic() - t0)))


def follower(url: str, until: float, writer: Writer, out: list[float]) -> None:
    headers = {"X-Studio-User": "teacher"}
    with httpx.Client(timeout=httpx.Timeout(30, read=30)) as http, \
            http.stream("GET", url, headers={**headers, "Last-Event-ID": str(Path(writer.path).stat().st_size)}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"step"' in line:
                step = json.loads(line[6:])["step"]
                sent = writer.written.get(step)
                if sent is not None:
                    out.append(time.monotonic() - sent)
            if time.monotonic() >= until:
                return


def phase(base: str, server: psutil.Process, *, studio: bool, writer: Writer) -> dict[str, Any]:
    until = time.monotonic() + PHASE_S
    lists: list[float] = []
    events: list[float] = []
    threads = []
    for i in range(STUDENTS):
        who = {"X-Studio-User": f"s{i:02d}"}
        url = f"{base}/api/lora/jobs" if studio else f"{base}/bench/constant"
        threads.append(threading.Thread(target=poller, args=(url, who, until, lists, POLL_S * i / STUDENTS)))
        if studio:
            threads.append(threading.Thread(target=follower, args=(f"{base}/api/lora/jobs/{RUNNING_ID}/events", until,
                                                                   writer, events)))
    cpu0 = sum(server.cpu_times()[:2])
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=PHASE_S + 60)
    cpu = sum(server.cpu_times()[:2]) - cpu0
    return {"list_p95": p95(lists), "event_p95": p95(events) if events else None, "requests": len(lists),
            "events": len(events), "cpu_per_client_min": cpu / STUDENTS / (PHASE_S / 60)}


def list_cost(jobs_dir: Path) -> tuple[float, float]:
    """Seconds to build the list of 1,000 jobs: the index (warm) vs reading every file, median of 5."""
    from devserver_lora.studio.index import Digest, JobIndex
    from devserver_lora.train.jobs import Job, JobStore

    store = JobStore(jobs_dir)
    index = JobIndex(store)
    index.refresh()

    def naive() -> None:
        for summary in store.list():
            Digest().add(Job(jobs_dir, summary.id).events())

    def timed(fn: Any) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    return timed(index.refresh), timed(naive)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", nargs=2, metavar=("HOME", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]))
        return 0
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    build_store(home / "jobs")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(home), str(port)])  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/bench/constant", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("the server did not start")
        server = psutil.Process(proc.pid)
        writer = Writer(home / "jobs" / RUNNING_ID / "events.jsonl")
        writer.start()
        httpx.get(base + "/api/lora/jobs", headers={"X-Studio-User": "teacher"}, timeout=60)  # warm the index
        baseline = phase(base, server, studio=False, writer=writer)
        studio = phase(base, server, studio=True, writer=writer)
        writer.stop.set()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    indexed, naive = list_cost(home / "jobs")
    print(f"{STUDENTS} students, {JOBS} jobs, {PHASE_S:.0f} s per phase, Waitress on 127.0.0.1, {os.cpu_count()} cores")
    print(f"baseline (constant route): p95 {baseline['list_p95'] * 1000:.1f} ms over {baseline['requests']} requests, "
          f"server CPU {baseline['cpu_per_client_min']:.3f} s per client per minute")
    print(f"studio: list p95 {studio['list_p95'] * 1000:.1f} ms over {studio['requests']} polls "
          f"= {studio['list_p95'] / baseline['list_p95']:.1f}x the constant route")
    if studio["event_p95"] is not None:
        print(f"studio: event delivery p95 {studio['event_p95'] * 1000:.1f} ms over {studio['events']} events "
              f"= {studio['event_p95'] / baseline['list_p95']:.1f}x the constant route's latency")
    print(f"studio: server CPU {studio['cpu_per_client_min']:.3f} s per client per minute "
          f"= {studio['cpu_per_client_min'] / max(baseline['cpu_per_client_min'], 1e-9):.1f}x the constant route")
    print(f"building the list of {JOBS} jobs: index {indexed * 1000:.1f} ms vs reading every job.json and "
          f"events.jsonl {naive * 1000:.1f} ms = {naive / indexed:.1f}x faster with the index")
    return 0


if __name__ == "__main__":
    sys.exit(main())
