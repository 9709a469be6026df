"""Benchmark: the native backend's training loop vs a minimal diffusers + peft loop, same tiny SD3, same data.

    .venv/bin/python bench/native_step.py [--steps 60] [--repeats 3]

Each loop runs in its own subprocess (so peak RSS, from ru_maxrss, is its own) on the tiny MMDiT of the
real-ComfyUI test checkpoint (depth 2, hidden 128) with the same cached latents/embeddings (256 px, 4 images),
the same rank, optimizer, learning rate, batch size and step count. Prints steps/s and peak RSS of both and the
ratios native/reference (targets: speed >= 1.0x, memory <= 1.0x). The best of --repeats runs counts for each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES, LATENT, CONTEXT, RANK = 4, 32, 77, 4
WARMUP = 3


def _data():
    import torch

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(N_IMAGES, 16, LATENT, LATENT, generator=g)
    context = torch.randn(N_IMAGES, CONTEXT, 4096, generator=g) * 0.1
    pooled = torch.randn(N_IMAGES, 2048, generator=g) * 0.1
    return latents, context, pooled


def worker_native(steps: int) -> float:
    from devserver_lora.train.native.caches import Caches
    from devserver_lora.train.native.loop import LoopSettings, LoraTrainer
    from devserver_lora.train.native.tiny import tiny_transformer

    latents, context, pooled = _data()
    caches = Caches(latents, None, context, pooled, context[:1] * 0, pooled[:1] * 0, "bench")
    settings = LoopSettings(total_steps=WARMUP, rank=RANK, alpha=RANK, learning_rate=1e-4, seed=0, max_grad_norm=1.0)
    trainer = LoraTrainer(tiny_transformer(seed=0), caches, settings)
    trainer.train()
    trainer.s.total_steps = WARMUP + steps
    start = time.perf_counter()
    trainer.train()
    return steps / (time.perf_counter() - start)


def worker_reference(steps: int) -> float:
    """The plainest correct SD3 LoRA step: peft adapter, AdamW, logit-normal shifted sigmas, MSE on velocity."""
    import torch
    from peft import LoraConfig

    from devserver_lora.train.native.tiny import tiny_transformer

    latents, context, pooled = _data()
    model = tiny_transformer(seed=0)
    model.requires_grad_(False)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
               "norm1_context.linear"]
    torch.manual_seed(0)
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    model.train()

    def step(i: int) -> None:
        idx = torch.tensor([i % N_IMAGES])
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        u = torch.sigmoid(torch.randn(1))
        sigma = 3.0 * u / (1 + 2.0 * u)
        xt = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        pred = model(hidden_states=xt, encoder_hidden_states=context[idx], pooled_projections=pooled[idx],
                     timestep=sigma * 1000, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(WARMUP):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps / (time.perf_counter() - start)


def run_worker(kind: str, steps: int) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(steps)],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["native", "reference"])
    args = parser.parse_args()
    if args.worker:
        fn = worker_native if args.worker == "native" else worker_reference
        rate = fn(args.steps)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"steps_per_s": rate, "peak_rss_mb": peak_mb}))
        return 0
    results: dict[str, list[dict[str, float]]] = {"reference": [], "native": []}
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        for kind in ("reference", "native"):
            results[kind].append(run_worker(kind, args.steps))
    best = {k: {"steps_per_s": max(r["steps_per_s"] for r in v), "peak_rss_mb": min(r["peak_rss_mb"] for r in v)}
            for k, v in results.items()}
    for kind in ("reference", "native"):
        print(f"{kind:>9}: {best[kind]['steps_per_s']:.2f} steps/s, peak RSS {best[kind]['peak_rss_mb']:.0f} MB")
    speed = best["native"]["steps_per_s"] / best["reference"]["steps_per_s"]
    memory = best["native"]["peak_rss_mb"] / best["reference"]["peak_rss_mb"]
    print(f"speed ratio native/reference: {speed:.2f}x (target >= 1.0x)")
    print(f"memory ratio native/reference: {memory:.2f}x (target <= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
