/* LoRA Studio page, part 2: one job's page — progress from the server-sent events, the loss chart, samples,
   run/cancel/resume/install/variant/delete. Shares S, $, t, el, api and the helpers of app.js (loaded before). */
"use strict";

async function openJob(id) {
  stopStream();
  S.points = []; S.job = null;
  $("studio-view").hidden = true; $("job-view").hidden = false;
  $("job-install-result").hidden = true;
  setStatus("job-action-status", "");
  try { S.job = await api("GET", "/jobs/" + encodeURIComponent(id)); }
  catch (e) { setStatus("job-action-status", e.describe(), true); return; }
  renderJob(S.job);
  if (S.job.installed) showInstall(S.job.installed);
  $("job-title").focus();
  followJob(id);
}

function closeJob() {
  const id = S.job && S.job.id;
  stopStream(); S.job = null;
  $("job-view").hidden = true; $("studio-view").hidden = false;
  loadJobs().then(() => {
    const btn = id && document.querySelector('tr[data-job="' + CSS.escape(id) + '"] button.open-job');
    (btn || $("jobs-refresh")).focus();
  });
}

function renderJob(job) {
  $("job-title").textContent = (job.output_name || job.id) + " — " + t("state_" + job.state);
  const facts = [["fact_id", job.id], ["fact_state", t("state_" + job.state)], ["fact_owner", job.owner],
                 ["fact_parent", job.parent], ["fact_dataset", job.dataset], ["fact_trigger", job.trigger],
                 ["fact_family", job.family], ["fact_preset", job.preset]];
  $("job-facts").replaceChildren(...facts.filter((f) => f[1]).flatMap(([k, v]) => [el("dt", { text: t(k) }), el("dd", { text: String(v) })]));
  const p = progressOf(job);
  showProgress(p.step, p.total, p.loss, p.eta, job);
  const active = ACTIVE.includes(job.state);
  $("job-run").disabled = job.state !== "created";
  $("job-cancel").disabled = !active;
  $("job-resume").disabled = !["cancelled", "failed", "interrupted"].includes(job.state);
  $("job-install").disabled = job.state !== "done";
  $("job-delete").disabled = active;
  const why = job.state === "failed" ? [job.diagnosis || job.message, job.hint ? "→ " + job.hint : ""].filter(Boolean).join("\n") : "";
  $("job-diagnosis").hidden = !why;
  $("job-diagnosis").textContent = why ? t("job_failed", { message: why }) : "";
  renderSamples(job.samples || []);
  const links = [];
  if (job.report_url) links.push(el("a", { href: job.report_url, id: "job-report", target: "_blank", rel: "noopener", text: t("report") }));
  if (job.loss_plot_url) links.push(el("a", { href: job.loss_plot_url, target: "_blank", rel: "noopener", text: t("loss_plot") }));
  $("job-links").replaceChildren(...links);
  $("job-command").textContent = job.command || "";
  drawChart();
}

function showProgress(step, total, loss, eta, job) {
  const bar = $("job-progress");
  bar.max = Math.max(total || 0, 1); bar.value = Math.min(step || 0, bar.max);
  const pct = total ? Math.round((100 * step) / total) : 0;
  let text;
  if (job && job.state === "queued" && job.queue_position !== null && job.queue_position !== undefined) text = t("progress_queue", { n: job.queue_position });
  else if (job && job.state === "done") text = t("progress_done", { step, total });
  else if (!total) text = t("progress_none");
  else {
    text = t("progress_text", { step, total, pct });
    if (loss !== null && loss !== undefined) text += " · " + t("progress_loss", { loss: formatLoss(loss) });
    // A time left only while it trains: a cancelled or failed job's last estimate would say it is still going.
    if (job && job.state === "running" && eta !== null && eta !== undefined && step < total) {
      text += " · " + t("progress_eta", { eta: fmtEta(eta) });
    }
  }
  $("job-progress-text").textContent = text;
}

function renderSamples(samples) {
  $("samples-empty").hidden = samples.length > 0;
  $("job-samples").replaceChildren(...samples.map((s) => el("li", {},
    apiImage(s.url, { alt: t("sample_alt", { step: s.step, prompt: s.prompt || "" }) }),
    el("span", { class: "muted", text: "#" + s.step + " · " + (s.prompt || "") }))));
}

function drawChart() {
  const total = S.job ? progressOf(S.job).total : 0;
  const n = drawLossChart($("loss-chart"), S.points, total);
  const last = S.points.length ? S.points[S.points.length - 1].loss : null;
  $("loss-chart-desc").textContent = n ? t("chart_desc", { n, loss: formatLoss(last) }) : t("chart_empty");
}

/* Server-sent events read with fetch (EventSource cannot send X-Studio-User); reconnects resume at the last id. */
function stopStream() { if (S.stream) { S.stream.abort(); S.stream = null; } clearTimeout(S.pollTimer); }

async function followJob(id) {
  const ctrl = new AbortController(); S.stream = ctrl;
  let lastId = null, ended = false;
  for (let attempt = 0; attempt < 50 && !ended && !ctrl.signal.aborted; attempt++) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId !== null) h["Last-Event-ID"] = lastId;
      const res = await fetch(API + "/jobs/" + encodeURIComponent(id) + "/events", { headers: h, signal: ctrl.signal });
      if (!res.ok || !res.body) break;
      const reader = res.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          const ev = { event: "message", data: "" , id: null };
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const i = line.indexOf(":"), k = i < 0 ? line : line.slice(0, i), v = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (k === "event") ev.event = v; else if (k === "data") ev.data += (ev.data ? "\n" : "") + v; else if (k === "id") ev.id = v;
          }
          if (ev.id !== null) lastId = ev.id;
          if (onEvent(ev)) ended = true;
        }
      }
    } catch (e) { if (ctrl.signal.aborted) return; }
    if (!ended && !ctrl.signal.aborted) {
      await refreshJob(id);
      if (!S.job || !ACTIVE.includes(S.job.state)) ended = true;
      else await new Promise((r) => setTimeout(r, 1000));
    }
  }
  if (!ctrl.signal.aborted) { await refreshJob(id); pollWhileOpen(id); }
}

function onEvent(ev) {
  let data = {};
  try { data = ev.data ? JSON.parse(ev.data) : {}; } catch (e) { return false; }
  if (!S.job) return false;
  if (ev.event === "progress") {
    S.job.progress = Object.assign({}, S.job.progress, { step: data.step, total: data.total, loss: data.loss, eta_s: data.eta_s });
    if (S.job.state !== "running") S.job.state = "running";
    if (data.loss !== null && data.loss !== undefined) {
      if (S.points.length && S.points[S.points.length - 1].step >= data.step) S.points = S.points.filter((p) => p.step < data.step);
      S.points.push({ step: data.step, loss: data.loss });
    }
    showProgress(data.step, data.total, data.loss, data.eta_s, S.job);
    drawChart();
  } else if (ev.event === "sample") {
    S.job.samples = (S.job.samples || []).concat([data]);
    renderSamples(S.job.samples);
  } else if (ev.event === "state") {
    S.job.state = data.state; renderJob(S.job);
  } else if (ev.event === "finished" || ev.event === "failed") {
    refreshJob(S.job.id);
    return true;
  }
  return false;
}

async function refreshJob(id) {
  try {
    const job = await api("GET", "/jobs/" + encodeURIComponent(id));
    if (!S.job || S.job.id !== id) return;
    S.job = job; renderJob(job);
  } catch (e) { /* shown by the next action */ }
}

/* A queued job has no events yet: look again every 2 s while its page is open. */
function pollWhileOpen(id) {
  clearTimeout(S.pollTimer);
  S.pollTimer = setTimeout(async () => {
    if (!S.job || S.job.id !== id || $("job-view").hidden) return;
    await refreshJob(id);
    if (S.job && ACTIVE.includes(S.job.state)) followJob(id);
  }, 2000);
}

async function jobAction(name, method, path, body) {
  const id = S.job.id;
  say("job-action-status", "busy", null);
  try {
    const res = await api(method, "/jobs/" + encodeURIComponent(id) + path, body);
    setStatus("job-action-status", "");
    return res;
  } catch (e) { setStatus("job-action-status", e.describe(), true); return null; }
}

async function runJob(path) {
  const job = await jobAction(path, "POST", path);
  if (!job) return;
  S.job = job; renderJob(job);
  stopStream(); followJob(job.id);
}

async function cancelJob() {
  const job = await jobAction("cancel", "POST", "/cancel");
  if (job) { S.job = job; renderJob(job); }
}

async function installJob() {
  const res = await jobAction("install", "POST", "/install", {});
  if (!res) return;
  showInstall(res);
  say("job-action-status", "install_done", { file: loraFile(res) });
  refreshJob(S.job.id);
}

/* The install answer and the job's install record (install.json) name the LoRA file differently. */
function loraFile(res) { return res.lora_file || res.lora_path || res.lora_name || ""; }

function showInstall(res) {
  $("job-install-result").hidden = false;
  const facts = [["install_lora", loraFile(res)], ["install_config", res.config_path]];
  $("install-facts").replaceChildren(...facts.filter((f) => f[1]).flatMap(([k, v]) => [el("dt", { text: t(k) }), el("dd", { text: v })]));
  $("install-config").textContent = res.config ? JSON.stringify(res.config, null, 2) : "";
}

async function variantJob() {
  const job = S.job;
  if (job.dataset && job.overrides !== undefined) {  // back to the form, prefilled; "create job" keeps the link
    closeJob();
    $("output-name").value = job.output_name + "_v2";
    $("trigger").value = job.trigger || "";
    if (job.family) $("family").value = job.family;
    if (job.backend) $("backend").value = job.backend;
    choosePreset(job.preset);
    renderPresets();
    for (const [k, v] of Object.entries(job.overrides || {})) {
      const input = $("hyper-" + k);
      if (input) { if (input.type === "checkbox") input.checked = v; else input.value = v; }
    }
    markChanged();
    $("dataset-select").value = job.dataset; await pickDataset();
    S.parent = job.id;
    say("create-status", "variant_ready", { parent: job.id });
    $("output-name").focus();
    return;
  }
  const made = await jobAction("variant", "POST", "/variant", { overrides: {} });
  if (made) { say("create-status", "variant_made", { id: made.id, parent: job.id }); openJob(made.id); }
}

async function deleteJob() {
  const id = S.job.id;
  if (!window.confirm(t("delete_confirm", { id }))) return;
  const ok = await jobAction("delete", "DELETE", "");
  if (ok !== null || !$("job-action-status").classList.contains("error")) { closeJob(); say("create-status", "deleted", { id }); }
}

