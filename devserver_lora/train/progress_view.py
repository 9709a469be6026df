"""The live progress bar of a training job, read from its events: used by `run`, `status --follow` and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..console import err, out
from . import runner

if TYPE_CHECKING:
    from .jobs import Job


def describe_event(event: dict[str, Any]) -> str | None:
    kind = event.get("type")
    if kind == "state":
        return f"[bold]{event.get('state')}[/]: {event.get('message', '')}"
    if kind == "checkpoint":
        when = f" (epoch {event['epoch']})" if event.get("epoch") else ""
        return f"[green]checkpoint saved[/]{when}: {Path(event['path']).name}"
    if kind == "error":
        text = f"[bold red]error[/] ({event.get('diagnosis')}): {event.get('message')}"
        return text + (f"\n    fix: {event['hint']}" if event.get("hint") else "")
    if kind == "done":
        return f"[green]final LoRA ready:[/] {event.get('lora_path')}"
    if kind == "log" and event.get("level") in ("warning", "error"):
        return f"[yellow]{event.get('message')}[/]"
    return None


def format_loss(event: dict[str, Any]) -> str:
    """The loss rounded to 3 significant digits (2.27, 0.0812): more digits are noise from one batch."""
    if event.get("loss_is_nan"):
        return "nan"
    return f"{event['loss']:.3g}" if event.get("loss") is not None else "-"


def phase_of(event: dict[str, Any]) -> str | None:
    """What the job is doing before its first step (an info log such as "encoding 4 images ..."), for the bar."""
    if event.get("type") == "log" and event.get("level") == "info" and event.get("message"):
        return f"{event['message']}…"
    return None


def show_follow(job: Job, *, timeout_s: float, poll_s: float = 0.5, replay: bool = True) -> str:
    """Rich progress bar driven by the job's events until it ends (Ctrl-C detaches; training goes on).

    Until the first step the bar names the phase (starting, encoding the images, ...) instead of a bare `0/?`."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("epoch {task.fields[epoch]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out, transient=False) as bar:
        task = bar.add_task("starting…", total=None, loss="-", epoch="-")

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") == "progress":
                epoch = f"{event['epoch']}/{event.get('total_epochs') or '?'}" if event.get("epoch") else "-"
                bar.update(task, description=job.id, completed=event["step"],
                           total=event["total_steps"] or None, loss=format_loss(event), epoch=epoch)
                return
            phase = phase_of(event)
            if phase and bar.tasks[0].completed == 0:
                bar.update(task, description=phase)
                bar.console.print(phase, highlight=False)  # also a line: a log or pipe shows no live bar
            text = describe_event(event)
            if text:
                bar.console.print(text, markup=True, highlight=False)

        try:
            state = runner.follow(job, on_event, timeout_s=timeout_s, poll_s=poll_s, replay=replay)
        except KeyboardInterrupt:
            err.print(f"detached; training goes on. Re-attach with `status {job.id} --follow`")
            return job.state
    return state
