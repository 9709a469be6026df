"""See what a LoRA learned: samples during training, contact sheets, numbers, the loss plot and one report per job.

Files in a job folder (names are stable; the LoRA Studio links them):

    eval_settings.json      prompts + seeds, sample interval, render size/steps/cfg, strengths, bias prompts (editable)
    samples/step{N:08d}_p{I:02d}_seed{S}.png   samples rendered during training (`sample` events announce them)
    loss_plot.png           loss per step (raw + smoothed), checkpoints, samples, learning rate; redrawn while running
    evaluation/             `evaluate`: sheet_*.png, images/ (every render alone, facts in PNG text), results.json
    report.html, report.json   the report: written by `evaluate`, at the end of every run, and by `install`

For the LoRA Studio: `listing.job_results(job) -> JobResults` lists what a job page links, each path relative to
the job folder and only files that exist: `sheets` (kind, title, file, note, columns with their numbers), `report`
(report.html), `report_json`, `loss_plot`, `samples` (step, index, prompt, seed, file), and when/what was evaluated.
It reads only; a damaged results.json is listed under `problems`, never raised.

Modules: `settings` (what to render), `samples` and `pngtext` (files), `lossplot`, `sheets` (Pillow contact sheets),
`metrics` (pixel change, CLIP score), `results` (results.json), `report` + `report_html`, `live` (the running plot),
`listing` (for the Studio); `render` and `run` (the `evaluate` command, through ComfyUI). Nothing is imported here: backends import the low
modules without pulling in the ComfyUI client.
"""
