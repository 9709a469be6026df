"""Benchmark: our websocket client vs DevServer's "poll /history every 2 s" loop, against the ComfyUI double.

    .venv/bin/python bench/client.py            (about 30-45 s on 2 cores; loopback only, every loop bounded)

(a) latency from the server finishing a prompt (it sends `executing null`, history written) to the caller holding
    the image bytes; jobs take a random 0.2-1.2 s on the double so completions land anywhere in a poll interval.
(b) 200 concurrent jobs: jobs per second and peak RSS growth of this process, both ways.
Both ways run in the same process against the same double, so the ratios compare like with like. The double runs
in-process (a thread), so RSS includes its share for both ways alike.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_double import ComfyDouble, sd3_workflow  # noqa: E402

from devserver_lora.comfy import ComfyClient, Timeouts  # noqa: E402

POLL_INTERVAL = 2.0  # DevServer today
LATENCY_JOBS = 8
CONCURRENT_JOBS = 200
STEP_DELAY = 0.04
TIMEOUTS = Timeouts(overall=60, idle=30, connect=5, http=30)


async def devserver_style(http: httpx.AsyncClient, url: str, workflow: dict) -> tuple[str, bytes]:
    """DevServer's loop: POST /prompt, poll /history/{id} every 2 s, then fetch the image (bounded: 30 polls)."""
    r = await http.post(url + "/prompt", json={"prompt": workflow, "client_id": "devserver"})
    pid = r.json()["prompt_id"]
    for _ in range(30):
        body = (await http.get(f"{url}/history/{pid}")).json()
        if pid in body:
            image = body[pid]["outputs"]["9"]["images"][0]
            # (DevServer takes the newest PNG in the output folder; we grant it the right file.)
            view = await http.get(url + "/view", params=image)
            return pid, view.content
        await asyncio.sleep(POLL_INTERVAL)
    raise TimeoutError(pid)


async def ours(client: ComfyClient, workflow: dict) -> tuple[str, bytes]:
    result = await client.run(workflow, check_loras=False)
    return result.prompt_id, result.images[0].data


def workflow(rng: random.Random, steps: int | None = None) -> dict:
    # Random length, so a job's end falls anywhere inside a poll interval.
    return sd3_workflow(seed=rng.randrange(2**32), steps=steps or rng.randint(5, 30))


async def latency(double: ComfyDouble, rng: random.Random) -> tuple[list[float], list[float]]:
    mine: list[float] = []
    theirs: list[float] = []
    async with ComfyClient(double.url, timeouts=TIMEOUTS) as client, httpx.AsyncClient(trust_env=False) as http:
        for _ in range(LATENCY_JOBS):
            pid, _ = await ours(client, workflow(rng))
            mine.append(time.monotonic() - double.completed_at[pid])
            pid, _ = await devserver_style(http, double.url, workflow(rng))
            theirs.append(time.monotonic() - double.completed_at[pid])
    return mine, theirs


class PeakRss:
    def __init__(self) -> None:
        self.proc = psutil.Process(os.getpid())
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.start) / 2**20


async def concurrent(double: ComfyDouble, use_ours: bool) -> tuple[float, float]:
    rng = random.Random(2)
    jobs = [workflow(rng, steps=3) for _ in range(CONCURRENT_JOBS)]
    with PeakRss() as mem:
        t0 = time.monotonic()
        if use_ours:
            # One client (one websocket, events routed by prompt_id) for all jobs, as DevServer would hold it.
            async with ComfyClient(double.url, timeouts=TIMEOUTS) as client:
                results = await asyncio.gather(*(ours(client, wf) for wf in jobs))
        else:
            limits = httpx.Limits(max_connections=CONCURRENT_JOBS)
            async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=60) as http:
                results = await asyncio.gather(*(devserver_style(http, double.url, wf) for wf in jobs))
        elapsed = time.monotonic() - t0
    assert len({pid for pid, _ in results}) == CONCURRENT_JOBS
    return CONCURRENT_JOBS / elapsed, mem.grown_mb


def ms(values: list[float], q: float) -> float:
    return 1000 * sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def main() -> None:
    with ComfyDouble() as double:
        double.faults.step_delay = STEP_DELAY
        double.faults.history_delay = 0.0
        mine, theirs = await latency(double, random.Random(1))
        med_m, med_t = statistics.median(mine) * 1000, statistics.median(theirs) * 1000
        print(
            f"(a) completion -> image in hand, {LATENCY_JOBS} jobs each: "
            f"ours median {med_m:.1f} ms (p95 {ms(mine, 0.95):.1f}), "
            f"poll-every-2s median {med_t:.1f} ms (p95 {ms(theirs, 0.95):.1f}) "
            f"-> ours is {med_t / max(med_m, 1e-3):.0f}x faster"
        )
        double.faults.step_delay = 0.0
        ours_rate, ours_mb = await concurrent(double, use_ours=True)
        base_rate, base_mb = await concurrent(double, use_ours=False)
        print(
            f"(b) {CONCURRENT_JOBS} concurrent jobs: ours {ours_rate:.1f} jobs/s (peak RSS +{ours_mb:.1f} MB), "
            f"poll-every-2s {base_rate:.1f} jobs/s (peak RSS +{base_mb:.1f} MB) "
            f"-> throughput ratio ours/baseline {ours_rate / base_rate:.2f}x, memory ratio {ours_mb / max(base_mb, 0.1):.2f}x"
        )


if __name__ == "__main__":
    asyncio.run(main())
