"""Overhead of the Kohya backend around sd-scripts, and progress-parser throughput.

1. Wall time of our launch + live progress parsing + event writing + checkpoint publishing + install, around
   the sd-scripts stand-in (tests/kohya_standin), as a ratio to the same stand-in command run alone with its
   output read and discarded. Both measured in this run, alternating, median of N. Target: ratio <= 1.05.
2. Parser throughput on a 100 000-line log built from the recorded run logs (tqdm `\\r` redraws included),
   as a ratio to merely splitting the same text into lines.

Usage: .venv/bin/python bench/kohya_overhead.py [--runs 7] [--steps 60] [--step-s 0.03]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
FIXTURES = ROOT / "tests" / "fixtures" / "kohya"


def _setup(tmp: Path, steps: int):
    from kohya_standin.build import make_dataset, make_job, make_kohya_install, make_models

    from devserver_lora.train.settings import load_settings

    kohya = make_kohya_install(tmp / "kohya")
    models = make_models(tmp / "models")
    dataset = make_dataset(tmp / "dataset", n=4)
    settings = load_settings(home=tmp / "home", jobs_dir=tmp / "jobs", kohya_dir=kohya, models_dir=models)

    def new_job(i: int):
        return make_job(tmp / "jobs", dataset, output_name=f"bench_{i}",
                        overrides={"max_train_steps": steps, "save_every_n_steps": max(1, steps // 4), "repeats": 1,
                                   "batch_size": 1})

    return settings, new_job


def _ours(settings, job, loras: Path) -> float:
    from devserver_lora.train.install import install_job
    from devserver_lora.train.kohya.backend import KohyaBackend

    t0 = time.perf_counter()
    KohyaBackend(settings, progress_interval_s=0.5).run(job)
    job.set_state("done", lora_path=str(job.outputs_dir / f"{job.plan.output_name}.safetensors"))
    install_job(job, loras_dir=loras, schemas_dir=None)
    return time.perf_counter() - t0


def _alone(job) -> float:
    """The very command our backend ran (its generated TOMLs), output read and thrown away."""
    import json

    cmd = json.loads((job.work_dir / "command.json").read_text())
    out_dir = job.work_dir / "alone"
    argv = [a if not a.endswith("/run-1") else str(out_dir) for a in cmd["argv"]]
    # sd-scripts reads output_dir from config.toml; point a copy at a fresh folder so nothing is reused
    cfg = job.work_dir / "config.toml"
    alone_cfg = job.work_dir / "config_alone.toml"
    alone_cfg.write_text(cfg.read_text().replace(str(job.work_dir / "kohya" / "run-1"), str(out_dir)))
    argv[argv.index(str(cfg))] = str(alone_cfg)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cmd["cwd"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)  # noqa: S603
    assert proc.stdout is not None
    while proc.stdout.read(65536):
        pass
    proc.wait()
    return time.perf_counter() - t0


def overhead(runs: int, steps: int, step_s: float) -> float:
    os.environ["STANDIN_FIXTURES"] = str(FIXTURES)
    os.environ["STANDIN_STEP_S"] = str(step_s)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        settings, new_job = _setup(tmp, steps)
        warm = new_job(0)
        _ours(settings, warm, tmp / "loras")
        ours, alone = [], []
        for i in range(1, runs + 1):
            job = new_job(i)
            ours.append(_ours(settings, job, tmp / "loras"))
            alone.append(_alone(job))
    mo, ma = statistics.median(ours), statistics.median(alone)
    ratio = mo / ma
    print(f"stand-in alone: median {ma:.3f} s   ours (launch+parse+events+publish+install): median {mo:.3f} s")
    print(f"RATIO ours/alone = {ratio:.3f}  (target <= 1.05; {runs} runs, {steps} steps at {step_s}s)")
    return ratio


def parser_throughput(lines_wanted: int = 100_000) -> float:
    from devserver_lora.train.kohya import progress as kp

    pieces = []
    for name in ("run_log.txt", "run_log_simple_dirs.txt", "run_log_te_lora.txt", "run_log_resume.txt"):
        text = (FIXTURES / name).read_text(encoding="utf-8")
        pieces += [p for p in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if p]
    raw_lines = []
    while len(raw_lines) < lines_wanted:
        raw_lines += pieces
    raw_lines = raw_lines[:lines_wanted]
    text = "".join(line + ("\r" if line.startswith("steps:") else "\n") for line in raw_lines)

    def split_only() -> int:
        s = kp.LineSplitter()
        return sum(len(s.feed(text[i:i + 65536])) for i in range(0, len(text), 65536))

    def parse() -> int:
        s, n = kp.LineSplitter(), 0
        for i in range(0, len(text), 65536):
            for line in s.feed(text[i:i + 65536]):
                if kp.parse_line(line) is not None:
                    n += 1
        return n

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    t_split, t_parse = best(split_only), best(parse)
    ratio = t_parse / t_split
    print(f"parser: {lines_wanted} lines in {t_parse * 1000:.1f} ms = {lines_wanted / t_parse:,.0f} lines/s "
          f"(splitting alone {t_split * 1000:.1f} ms)")
    print(f"RATIO parse/split = {ratio:.2f}")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--step-s", type=float, default=0.03)
    args = ap.parse_args()
    ratio = overhead(args.runs, args.steps, args.step_s)
    parser_throughput()
    return 0 if ratio <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
