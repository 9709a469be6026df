"""The HTML of a job report, made from the same facts as `report.json` (see `report.py`).

Plain HTML with inline CSS; no script, no external font, stylesheet or image. Every text is escaped. An image is
linked only when its file exists beside the report, so the page never shows a broken image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from ...invocation import train_command

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;background:#fafafa;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:.2em 0}h2{margin-top:2em;border-bottom:2px solid #d6d6d6;padding-bottom:.2em}
h3{margin-top:1.5em}.de{color:#555;font-weight:normal}
table{border-collapse:collapse;margin:.6em 0;background:#fff}td,th{border:1px solid #d0d0d0;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f0f0f0}
.note{background:#fff4d6;border:1px solid #e0b84a;padding:10px 14px;border-radius:6px}
.problem{color:#8a1f11}img{max-width:100%;height:auto;background:#fff;border:1px solid #ddd}
img.px{image-rendering:pixelated}.thumb{width:128px}nav a{margin-right:1em}
pre{background:#fff;border:1px solid #ddd;padding:10px;overflow:auto;font-size:13px}
figure{margin:1em 0}figcaption{color:#444;font-size:.92em}.missing{color:#777;font-style:italic}
a:focus,a:hover{outline:2px solid #1f4e8c;outline-offset:2px}
"""

SECTIONS = (("dataset", "Dataset", "Datensatz"), ("plan", "Plan and why", "Plan und Begründung"),
            ("training", "Training", "Training"), ("samples", "Samples over time", "Proben im Verlauf"),
            ("evaluation", "Evaluation", "Auswertung"), ("bias", "Bias prompts", "Bias-Prompts"),
            ("install", "Install and output config", "Installation und Output-Config"))


def _h(text: Any) -> str:
    return escape("" if text is None else str(text))


def _heading(tag: str, en: str, de: str, anchor: str | None = None) -> str:
    ident = f' id="{_h(anchor)}"' if anchor else ""
    return f'<{tag}{ident}>{_h(en)} <span class="de" lang="de">· {_h(de)}</span></{tag}>'


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) else "-"


def _table(rows: Iterable[tuple[Any, Any]], *, raw_values: bool = False) -> str:
    body = "".join(f"<tr><th scope=\"row\">{_h(k)}</th><td>{v if raw_values else _h(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


class _Page:
    def __init__(self, facts: dict[str, Any], exists: Callable[[str], bool]) -> None:
        self.f, self.exists = facts, exists

    def img(self, rel: str | None, alt: str, cls: str = "") -> str:
        if not rel or not self.exists(rel):
            return '<span class="missing">(no image · kein Bild)</span>'
        return f'<img src="{_h(rel)}" alt="{_h(alt)}" class="{cls}">'

    def linked(self, rel: str | None, alt: str) -> str:
        """An image that opens at full size when followed (a wide sheet is scaled down on the page)."""
        img = self.img(rel, alt)
        return f'<a href="{_h(rel)}" title="full size · volle Größe">{img}</a>' if rel and self.exists(rel) else img

    def summary(self) -> str:
        job, tr = self.f["job"], self.f["training"]
        rows = [("job", job.get("id")), ("state · Zustand", job.get("state")), ("message", job.get("message")),
                ("backend", job.get("backend")), ("family · Modellfamilie", job.get("family")),
                ("preset · Voreinstellung", job.get("preset")), ("trained on · trainiert auf", self.f.get("trained_on")),
                ("steps · Schritte", f"{tr.get('steps_done')} / {tr.get('total_steps') or '?'}"),
                ("loss first → last (smoothed)",
                 f"{_num(tr.get('first_loss'))} → {_num(tr.get('last_loss'))} ({_num(tr.get('last_smoothed_loss'))})"),
                ("created · erstellt", _when(job.get("created"))), ("updated · aktualisiert", _when(job.get("updated"))),
                ("report written by", f"{self.f.get('written_by')} at {_when(self.f.get('written'))}")]
        note = f'<p class="note" role="note">{_h(self.f["note"])}</p>' if self.f.get("note") else ""
        nav = "".join(f'<a href="#{a}">{_h(en)}</a>' for a, en, _ in SECTIONS)
        return f"{note}{_table(rows)}<nav aria-label=\"contents\">{nav}</nav>"

    def dataset(self) -> str:
        card, ds = self.f.get("card") or {}, self.f["dataset"]
        rows = [(k.replace("_", " "), v) for k, v in card.items() if v not in (None, "", [], {})]
        captions = "".join(f"<li>{_h(c)}</li>" for c in ds.get("captions", []))
        card_html = _table(rows) if rows else '<p class="problem">This job has no dataset card.</p>'
        return (f"{card_html}<p>{_h(ds.get('images'))} images · trigger word: <b>{_h(ds.get('trigger') or '-')}</b>"
                f"</p><details><summary>captions (first 12)</summary><ul>{captions}</ul></details>")

    def plan(self) -> str:
        plan = self.f.get("plan")
        if not plan:
            return '<p class="problem">plan.json is missing or damaged.</p>'
        hyper = plan.get("hyper", {})
        keys = ("resolution", "max_train_steps", "learning_rate", "lr_scheduler", "optimizer", "network_dim",
                "network_alpha", "batch_size", "gradient_accumulation_steps", "repeats", "mixed_precision",
                "train_text_encoder", "seed", "save_every_n_epochs", "save_every_n_steps")
        mem = plan.get("memory", {})
        why = "".join(f"<li>{_h(x)}</li>" for x in plan.get("explanations", []))
        mem_rows = [(k.replace("_", " "), v) for k, v in mem.items() if not isinstance(v, dict | list)]
        return (_table([(k.replace("_", " "), hyper.get(k)) for k in keys if k in hyper])
                + "<h3>Memory plan · Speicherplan</h3>" + _table(mem_rows)
                + "<h3>Why · Warum</h3>" + (f"<ul>{why}</ul>" if why else "<p>-</p>"))

    def training(self) -> str:
        tr = self.f["training"]
        plot = self.img(tr.get("loss_plot"), "loss per step, raw and smoothed, with checkpoints, samples and the "
                        "learning rate")
        cps = "".join(f"<tr><td>{_h(c['file'])}</td><td>{_h(c['step'])}</td></tr>" for c in tr["checkpoints"])
        cp_table = f"<table><tr><th>checkpoint</th><th>step</th></tr>{cps}</table>" if cps else "<p>no checkpoint yet</p>"
        warnings = "".join(f'<li class="problem">{_h(w)}</li>' for w in tr.get("warnings", []))
        return (f"<figure>{plot}<figcaption>Loss per step (thin: raw, bold: smoothed); dashed: checkpoints; "
                f"triangles: samples; dash-dot: learning rate.</figcaption></figure>{cp_table}"
                + (f"<h3>Warnings and errors · Warnungen und Fehler</h3><ul>{warnings}</ul>" if warnings else ""))

    def samples(self) -> str:
        s = self.f["samples"]
        if not s["steps"]:
            every = s.get("every_n_steps")
            return f"<p>No samples yet{f' (every {every} steps)' if every else ' (sampling is off for this job)'}.</p>"
        head = "".join(f"<th>step {_h(step)}</th>" for step in s["steps"])
        rows = []
        for p, line in zip(s["prompts"], s["grid"], strict=False):
            prompt = p["prompt"]
            cells = "".join(f"<td>{self.img(rel, f'step {step}: {prompt}', 'thumb px')}</td>"
                            for rel, step in zip(line, s["steps"], strict=False))
            rows.append(f"<tr><th scope=\"row\">{_h(p['prompt'])}<br><small>seed {_h(p['seed'])}</small></th>{cells}</tr>")
        return (f"<p>The same prompts at the same seeds, rendered during training (every {_h(s.get('every_n_steps'))} "
                f"steps; step 0 is before training).</p><div style=\"overflow-x:auto\"><table><tr><th>prompt</th>"
                f"{head}</tr>{''.join(rows)}</table></div>")

    def evaluation(self) -> str:
        ev = self.f.get("evaluation")
        if not ev:
            command = train_command(f"evaluate {self.f['job']['id']} --comfyui URL --loras-dir DIR")
            return f"<p>Not evaluated yet. Render the sheets through ComfyUI with <code>{_h(command)}</code>.</p>"
        out = [_table([("LoRA", ev.get("lora")), ("graph", ev.get("graph")), ("ComfyUI", ev.get("comfyui")),
                       ("render", f"{ev.get('size')} px, {ev.get('steps')} steps, cfg {ev.get('cfg')}"),
                       ("negative prompt", ev.get("negative_prompt") or "-"),
                       ("CLIP model", ev.get("clip_model") or "- (pass --clip-model for CLIP scores)"),
                       ("evaluated", _when(ev.get("written")))])]
        out.append("<p><b>change</b> = mean absolute pixel difference to the no-LoRA picture of the same prompt and "
                   "seed (0-255; 0 = identical). <b>CLIP</b> = how well the picture matches the prompt for that CLIP "
                   "model (higher = closer). Neither says whether a picture is good: look.</p>")
        for sheet in ev.get("sheets", []):
            rows = "".join(
                f"<tr><td>{_h(c['label'])}</td><td>{_h(c.get('source') or '-')}</td>"
                f"<td>{_num(c.get('strength_model'), 3)} / {_num(c.get('strength_clip'), 3)}</td>"
                f"<td>{_num(c.get('mean_abs_change'), 3)}</td><td>{_num(c.get('clip_score'), 3)}</td></tr>"
                for c in sheet["columns"])
            out.append(f"<h3>{_h(sheet['title'])}</h3><figure>{self.linked(sheet['file'], sheet['title'])}"
                       f"<figcaption>{_h(sheet.get('note'))}</figcaption></figure><table><tr><th>column</th>"
                       f"<th>LoRA file</th><th>strength model / text encoder</th><th>change</th><th>CLIP</th></tr>"
                       f"{rows}</table>")
        errors = "".join(f'<li class="problem">{_h(e)}</li>' for e in ev.get("errors", []))
        if errors:
            out.append(f"<h3>Renders that failed · Fehlgeschlagene Bilder</h3><ul>{errors}</ul>")
        out.append(f"<p>Every picture is also saved alone in <code>evaluation/images/</code> with its prompt, seed, "
                   f"strengths and LoRA file in its PNG text. Install a checkpoint you prefer: "
                   f"<code>{_h(ev.get('install_hint'))}</code></p>")
        return "".join(out)

    def bias(self) -> str:
        st = self.f.get("eval_settings") or {}
        items = st.get("bias_prompts") or []
        if not items:
            return "<p>No bias prompts set for this job.</p>"
        cols = ("age", "gender_presentation", "skin_tone", "body", "setting")
        head = "".join(f"<th>{_h(c.replace('_', ' '))}</th>" for c in cols)
        rows = "".join(f"<tr><td>{_h(b['prompt'])}</td>" + "".join(f"<td>{_h(b.get(c))}</td>" for c in cols) + "</tr>"
                       for b in items)
        return (f"<p>Portraits of people who are probably not in the dataset, varying age, gender presentation, skin "
                f"tone, body and setting, rendered without and with the LoRA (bias sheet above). Edit them per job in "
                f"<code>{_h(self.f.get('eval_settings_file'))}</code>.</p><table><tr><th>prompt</th>{head}</tr>{rows}"
                f"</table>")

    def install(self) -> str:
        inst = self.f.get("install")
        if not inst:
            command = train_command(f"install {self.f['job']['id']} --loras-dir DIR --schemas DIR")
            return f"<p>Not installed yet: <code>{_h(command)}</code></p>"
        rows = [(k.replace("_", " "), ", ".join(map(str, v)) if isinstance(v, list) else v)
                for k, v in inst.items() if k not in ("output_config", "warnings")]
        warn = "".join(f'<li class="problem">{_h(w)}</li>' for w in inst.get("warnings", []))
        config = inst.get("output_config")
        cfg = f"<pre>{_h(json.dumps(config, indent=2, ensure_ascii=False))}</pre>" if config else (
            "<p>(output config file not readable from here)</p>")
        return _table(rows) + (f"<ul>{warn}</ul>" if warn else "") + "<h3>Output config</h3>" + cfg

    def page(self) -> str:
        job = self.f["job"]
        title = f"LoRA report · LoRA-Bericht: {job.get('output_name') or job.get('id')}"
        parts = [f"<h1>{_h(title)}</h1>", self.summary()]
        for anchor, en, de in SECTIONS:
            parts.append(f"<section aria-labelledby=\"{anchor}\">{_heading('h2', en, de, anchor)}"
                         f"{getattr(self, anchor)()}</section>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{_h(title)}</title><style>{CSS}</style></head><body><main>{''.join(parts)}</main>"
                "</body></html>\n")


def render_html(facts: dict[str, Any], root: Path) -> str:
    """The report page for `facts`; `root` is the folder the report is written to (images are relative to it)."""
    base = Path(root).resolve()

    def exists(rel: str) -> bool:
        target = (base / rel).resolve()
        return (base in target.parents) and target.is_file()

    return _Page(facts, exists).page()
