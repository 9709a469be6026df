"""The loss plot of a job: `loss_plot.png` in the job folder (a stable name: the LoRA Studio shows this file).

Drawn from the job's events alone, so it works for both backends and for a job still running: raw loss per step
(thin), an exponential moving average (bold), checkpoints as dashed green lines, sample steps as purple triangles
on the step axis, and the learning rate on a second axis (the rate each step used, from the native backend's
events; for Kohya the schedule the plan asks for, computed with the same `transformers` schedule functions
sd-scripts uses, and labelled "planned"). Matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...paths import atomic_write_bytes

if TYPE_CHECKING:
    from ..jobs import Job
    from ..plan import TrainingPlan

LOSS_PLOT_FILE = "loss_plot.png"
SMOOTHING = 0.9  # EMA factor: each point keeps 90 % of the previous average


@dataclass
class LossSeries:
    """What the plot shows, read from a job's events."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    nan_steps: list[int] = field(default_factory=list)
    lr_steps: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    lr_planned: bool = False
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    sample_steps: list[int] = field(default_factory=list)
    total_steps: int | None = None

    @property
    def smoothed(self) -> list[float]:
        """Debiased exponential moving average (as TensorBoard draws it): the first points are not pulled to 0."""
        out: list[float] = []
        avg = 0.0
        for n, loss in enumerate(self.losses, start=1):
            avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
            out.append(avg / (1 - SMOOTHING**n))
        return out


def series_of(events: list[dict[str, Any]]) -> LossSeries:
    """Loss, learning rate, checkpoints and samples per step; a resumed step counts once (the last value wins)."""
    s = LossSeries()
    losses: dict[int, float] = {}
    lrs: dict[int, float] = {}
    nan: set[int] = set()
    for e in events:
        kind = e.get("type")
        step = e.get("step")
        if kind == "progress" and isinstance(step, int):
            s.total_steps = e.get("total_steps") or s.total_steps
            if e.get("loss_is_nan"):
                nan.add(step)
            elif isinstance(e.get("loss"), int | float) and math.isfinite(e["loss"]):
                losses[step] = float(e["loss"])
            if isinstance(e.get("lr"), int | float):
                lrs[step] = float(e["lr"])
        elif kind == "checkpoint" and isinstance(step, int):
            s.checkpoints.append((step, Path(str(e.get("path", ""))).name))
        elif kind == "sample" and isinstance(step, int) and step not in s.sample_steps:
            s.sample_steps.append(step)
    s.steps = sorted(losses)
    s.losses = [losses[k] for k in s.steps]
    s.nan_steps = sorted(nan)
    s.lr_steps = sorted(lrs)
    s.lrs = [lrs[k] for k in s.lr_steps]
    return s


def planned_lr(plan: TrainingPlan, total_steps: int) -> list[float]:
    """The learning rate of each step as the plan's scheduler would set it (transformers' schedules, as
    sd-scripts builds them; unknown names give an empty list rather than a guess)."""
    try:
        import torch
        from transformers.optimization import get_scheduler
    except ImportError:
        return []
    h = plan.hyper
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=float(h.learning_rate))
    try:
        kwargs: dict[str, Any] = {} if h.lr_scheduler == "constant" else {"num_warmup_steps": int(h.lr_warmup_steps)}
        scheduler = get_scheduler(h.lr_scheduler, optimizer, num_training_steps=total_steps, **kwargs)
    except (ValueError, KeyError, TypeError):
        return []
    out = []
    for _ in range(total_steps):
        out.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return out


def write_loss_plot(job: Job, *, title: str | None = None) -> Path:
    """Draw the plot from the job's events and publish it atomically as `<job>/loss_plot.png`."""
    series = series_of(job.events())
    if not series.lrs and series.steps:
        try:
            total = series.total_steps or int(job.plan.hyper.max_train_steps)
            planned = planned_lr(job.plan, total)
        except Exception:  # noqa: BLE001 - a plan that cannot be read just leaves the rate out
            planned = []
        if planned:
            series.lr_steps = list(range(1, len(planned) + 1))
            series.lrs = planned
            series.lr_planned = True
    png = render_png(series, title=title or f"Training loss · Trainingsverlust — {job.id}")
    return atomic_write_bytes(Path(job.dir) / LOSS_PLOT_FILE, png)


def render_png(series: LossSeries, *, title: str) -> bytes:
    """The plot as PNG bytes."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("training step · Trainingsschritt")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    handles: list[Any] = []
    if series.steps:
        (raw,) = ax.plot(series.steps, series.losses, color="#7fa7d9", linewidth=0.8, alpha=0.8, label="loss (raw)")
        (smooth,) = ax.plot(series.steps, series.smoothed, color="#1f4e8c", linewidth=2.2,
                            label=f"loss (smoothed, EMA {SMOOTHING:g})")
        handles += [raw, smooth]
    else:
        ax.text(0.5, 0.5, "no training steps yet · noch keine Trainingsschritte", transform=ax.transAxes,
                ha="center", va="center", color="#666666")
    if series.nan_steps:
        top = max(series.losses) if series.losses else 1.0
        handles.append(ax.scatter(series.nan_steps, [top] * len(series.nan_steps), marker="x", color="#c0392b",
                                  label="loss was NaN (diverged)", zorder=5))
    for i, (step, _name) in enumerate(series.checkpoints):
        line = ax.axvline(step, color="#2e8b57", linestyle="--", linewidth=1.0,
                          label="checkpoint saved" if i == 0 else None)
        if i == 0:
            handles.append(line)
    if series.sample_steps:
        handles.append(ax.scatter(series.sample_steps, [0.0] * len(series.sample_steps), marker="^", s=60,
                                  color="#8e44ad", transform=ax.get_xaxis_transform(), clip_on=False, zorder=6,
                                  label="samples rendered"))
    if series.total_steps:
        ax.set_xlim(0, max(series.total_steps, max(series.steps, default=0)))
    if series.lrs:
        ax2 = ax.twinx()
        label = "learning rate (planned)" if series.lr_planned else "learning rate"
        (lr_line,) = ax2.plot(series.lr_steps, series.lrs, color="#e67e22", linewidth=1.2, linestyle="-.",
                              label=label)
        ax2.set_ylabel(label, color="#e67e22")
        ax2.tick_params(axis="y", colors="#e67e22")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax2.set_ylim(bottom=0)
        handles.append(lr_line)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8, frameon=False)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
