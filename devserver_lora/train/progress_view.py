"""The live progress bar of a training job, read from its events: used by `run`, `status --follow` and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..console import err, out
from . import runner


def describe_event(event: dict[str, Any]) -> str | None:
    kind = event.get("type")
    if kind == "state":
        return f"[bold]{event.get('state')}[/]: {event.get('message', '')}"
    if kind == "checkpoint":
        return f"[green]saved[/] {Path(event['path']).name}"
    if kind == "error":
        text = f"[bold red]error[/] ({event.get('diagnosis')}): {event.get('message')}"
        return text + (f"\n    fix: {event['hint']}" if event.get("hint") else "")
    if kind == "done":
        return f"[green]LoRA ready:[/] {event.get('lora_path')}"
    if kind == "log" and event.get("level") in ("warning", "error"):
        return f"[yellow]{event.get('message')}[/]"
    return None


def show_follow(job: Any, *, timeout_s: float, poll_s: float = 0.5, replay: bool = True) -> str:
    """Rich progress bar driven by the job's events until it ends (Ctrl-C detaches; training goes on)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("epoch {task.fields[epoch]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out, transient=False) as bar:
        task = bar.add_task(job.id, total=None, loss="-", epoch="-")

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") == "progress":
                loss = "nan" if event.get("loss_is_nan") else (
                    f"{event['loss']:.4f}" if event.get("loss") is not None else "-")
                epoch = f"{event['epoch']}/{event.get('total_epochs') or '?'}" if event.get("epoch") else "-"
                bar.update(task, completed=event["step"], total=event["total_steps"] or None, loss=loss, epoch=epoch)
                return
            text = describe_event(event)
            if text:
                bar.console.print(text, markup=True, highlight=False)

        start = 0 if replay else len(job.events())
        try:
            state = runner.follow(job, on_event, timeout_s=timeout_s, poll_s=poll_s, start_index=start)
        except KeyboardInterrupt:
            err.print(f"detached; training goes on. Re-attach with `status {job.id} --follow`")
            return job.state
    return state
