/* LoRA Studio page (/lora): plain JS against the REST contract in devserver_lora/studio/API.md.

   (job.js holds the job page.) Element ids the browser tests (tests/test_studio_browser.py) rely on:
   identity    #user-dialog #user-name #user-save #user-label #user-change     language  #lang-toggle (html[lang])
   project     #output-name #trigger #family #backend #gpu, presets: input[name=preset] (value = preset id),
               values: #hyper-<key> (e.g. #hyper-max_train_steps), #hyper-reset
   dataset     #upload-form #dataset-name #dataset-files (+ #dataset-files-chosen) #upload-button #upload-status #dataset-select
               #dataset-result #dataset-blocking #dataset-ok #dataset-resolution #dataset-problems #dataset-images (li.bad = blocking)
   card        #card-form, fields #card-<DatasetCard field> (title source rights_holder licence consent
               cultural_context approved_by description language tags), #card-save #card-status
   plan        #plan-status #plan-problems #plan-facts #plan-memory #command #copy-command #copy-status
               #create-job #create-status
   jobs        #jobs-table #jobs-body (tr[data-job=<id>] with button.open-job, progress, td.state, td.loss)
               #all-jobs (teachers) #jobs-refresh #jobs-empty
   job page    #job-view #job-title #job-facts #job-progress #job-progress-text #job-diagnosis #job-run
               #job-cancel #job-resume #job-install #job-variant #job-delete #job-action-status #loss-chart
               (svg, data-points) #job-samples #job-install-result #install-facts #install-config #job-links
               #job-command #job-back
   Identity: standalone, the name given once is kept in localStorage ("loraStudioUser") and sent as X-Studio-User;
   mounted in DevServer the server knows the user (GET /api/lora/me says mounted).
*/
"use strict";

const API = "/api/lora";
const USER_KEY = "loraStudioUser";
const LANG_KEY = "loraStudioLang";
const ACTIVE = ["queued", "running"];
const S = {
  lang: "en", user: null, me: null, catalog: null, preset: null, dataset: null, parent: null,
  command: "", plan: null, jobs: [], queue: [], job: null, points: [], stream: null, planTimer: 0, pollTimer: 0,
};

const $ = (id) => document.getElementById(id);
const t = (key, values) => translate(S.lang, key, values);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/* A status line with raw text (a server's message) ... */
function setStatus(id, text, bad) {
  const node = $(id);
  delete node.dataset.sayKey;
  node.textContent = text || "";
  node.classList.toggle("error", Boolean(bad));
}

/* ... or with one of our strings, which a language switch translates again. */
function say(id, key, values, bad) {
  setStatus(id, t(key, values || undefined), bad);
  const node = $(id);
  node.dataset.sayKey = key;
  node.dataset.sayValues = JSON.stringify(values || {});
}

function sayAgain() {
  for (const node of document.querySelectorAll("[data-say-key]")) {
    node.textContent = t(node.dataset.sayKey, JSON.parse(node.dataset.sayValues || "{}"));
  }
}

/* ---- the server ---- */
class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || "HTTP " + status);
    this.status = status; this.hint = e.hint || ""; this.fields = e.fields || [];
  }
  describe() {
    const parts = [this.message];
    if (this.hint) parts.push("→ " + this.hint);
    for (const f of this.fields) parts.push(t("error_fields", { field: f.field, message: f.message + (f.hint ? " → " + f.hint : "") }));
    return parts.join("\n");
  }
}

function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  if (S.user) h["X-Studio-User"] = S.user;
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  let res;
  try { res = await fetch(API + path, init); } catch (e) { throw new ApiError(0, { error: { message: t("error_network", { what: path }) } }); }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }  // not the API's JSON (a proxy's page)
  if (!res.ok && !(data && data.error)) data = { error: { message: t("error_http", { status: res.status, what: method + " " + API + path }) } };
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/* Images and links cannot send a header. Standalone, images are fetched with the header and shown from a blob
   (cached per URL); links (the report, which loads its own images) rely on the cookie set at sign-in, which the
   server reads like the header. Mounted in DevServer the session covers both. */
const IMAGE_CACHE = new Map();

function apiImage(url, attrs) {
  const img = el("img", attrs);
  if (!url) return img;
  if (!S.user || (S.me && S.me.mounted)) { img.src = url; return img; }
  if (!IMAGE_CACHE.has(url)) {
    IMAGE_CACHE.set(url, fetch(url, { headers: headers({ Accept: "image/*" }) })
      .then((res) => (res.ok ? res.blob() : Promise.reject(new Error("HTTP " + res.status))))
      .then((blob) => URL.createObjectURL(blob))
      .catch((e) => { IMAGE_CACHE.delete(url); throw e; }));
  }
  IMAGE_CACHE.get(url).then((src) => { img.src = src; }, () => { img.classList.add("broken"); });
  return img;
}

function setUserCookie() {
  if (S.user && !(S.me && S.me.mounted)) {
    document.cookie = "lora_studio_user=" + encodeURIComponent(S.user) + "; path=/; SameSite=Strict";
  }
}

function label(obj) { return (obj && (obj["label_" + S.lang] || obj.label_en || obj.id)) || ""; }

function fmtEta(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 90) return t("seconds", { n: s });
  if (s < 5400) return t("minutes", { n: Math.round(s / 60) });
  return t("hours", { h: Math.floor(s / 3600), m: Math.round((s % 3600) / 60) });
}

/* ---- language ---- */
function applyLang() {
  document.documentElement.lang = S.lang;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  $("lang-toggle").textContent = t("lang_other");
  $("lang-toggle").setAttribute("lang", S.lang === "de" ? "en" : "de");
  renderUser();
  if (S.catalog) { renderFamilies(); renderPresets(); renderHyper(true); }
  if (S.dataset) renderDataset(S.dataset);
  renderChosenFiles();
  renderJobs();
  if (S.job) renderJob(S.job);
  if (!S.command) say("plan-status", "plan_wait", null);
  if (S.plan) renderPlan(S.plan);
  sayAgain();
}

/* ---- identity ---- */
function renderUser() {
  const me = S.me || {};
  $("user-label").textContent = S.user ? t(me.teacher ? "user_teacher" : "user_is", { user: S.user }) : "";
  $("user-change").hidden = Boolean(me.mounted);
  if ($("all-jobs-box").hidden && me.teacher) $("all-jobs").checked = true;  // a teacher starts with everyone's jobs
  $("all-jobs-box").hidden = !me.teacher;
}

function askUser() {
  $("user-name").value = S.user || "";
  $("user-error").hidden = true;
  $("user-dialog").showModal();
  $("user-name").focus();
}

async function saveUser(ev) {
  ev.preventDefault();
  const name = $("user-name").value.trim();
  if (!/^[A-Za-z0-9 ._@-]{1,64}$/.test(name)) {
    $("user-error").textContent = t("user_bad"); $("user-error").hidden = false; $("user-name").focus(); return;
  }
  S.user = name; localStorage.setItem(USER_KEY, name); setUserCookie();
  $("user-dialog").close();
  await loadMe(); await loadDatasets(); await loadJobs();
  $("output-name").focus();
}

async function loadMe() {
  S.me = await api("GET", "/me");
  if (S.me.mounted && S.me.user) S.user = S.me.user;
  setUserCookie();
  renderUser();
}

/* ---- presets and values ---- */
function renderFamilies() {
  const sel = $("family"), keep = sel.value;
  sel.replaceChildren(...S.catalog.families.map((f) => el("option", { value: f.id, text: label(f) })));
  if (keep) sel.value = keep;
}

function renderGpus(gpus) {
  $("gpu").replaceChildren(...gpus.map((g) => el("option", { value: g.id, text: g.label + (g.vram_gb ? " (" + g.vram_gb + " GB)" : "") })));
  if (gpus.some((g) => g.id === "detected")) $("gpu").value = "detected";  // this server's own card first
}

function renderPresets() {
  const box = $("preset-list");
  box.replaceChildren(...S.catalog.presets.map((p) => {
    const id = "preset-" + p.id;
    const facts = [t("preset_images", { min: p.min_images, max: p.max_images }), t("preset_steps", { steps: p.target_steps })];
    if (p.min_vram_gb) facts.push(t("preset_vram", { gb: p.min_vram_gb }));
    return el("div", { class: "preset" },
      el("input", { type: "radio", name: "preset", id, value: p.id, checked: S.preset && S.preset.id === p.id,
                    "aria-describedby": id + "-text", onchange: () => choosePreset(p.id) }),
      el("label", { for: id }, el("strong", { text: label(p) }),
         el("span", { id: id + "-text", class: "muted", text: (p["explanation_" + S.lang] || p.explanation_en) + " · " + facts.join(" · ") })));
  }));
}

/* The editable values: the preset's [hyper] plus the step count; inputs typed from the preset's values. */
function hyperDefaults() {
  return Object.assign({}, S.preset.hyper, { max_train_steps: S.preset.target_steps });
}

function hyperRange(key) {
  const r = (S.preset.ranges || {})[key];
  if (r) return r;
  return { max_train_steps: [1, 1000000], batch_size: [1, 64], repeats: [1, 1000], lr_warmup_steps: [0, 100000],
           save_every_n_epochs: [1, 1000], gradient_accumulation_steps: [1, 64] }[key] || null;
}

function renderHyper(keepValues) {
  const old = keepValues ? readHyper() : {};
  const box = $("hyper-fields");
  const defaults = hyperDefaults();
  box.replaceChildren(...Object.entries(defaults).map(([key, value]) => {
    const id = "hyper-" + key, range = hyperRange(key), hint = id + "-hint";
    let input;
    const current = key in old ? old[key] : value;
    if (typeof value === "boolean") {
      input = el("input", { type: "checkbox", id, checked: current });
    } else if (key === "lr_scheduler" || key === "optimizer") {
      const list = key === "optimizer" ? S.catalog.optimizers : S.catalog.schedulers;
      input = el("select", { id }, ...list.map((v) => el("option", { value: v, text: v, selected: v === current })));
    } else if (typeof value === "number") {
      const step = Number.isInteger(value) && key !== "learning_rate" ? 1 : "any";
      input = el("input", { type: "number", id, value: current, step, min: range ? range[0] : null,
                            max: range ? range[1] : null, "aria-describedby": range ? hint : null, inputmode: step === 1 ? "numeric" : "decimal" });
    } else {
      input = el("input", { id, value: current === null ? "" : current });
    }
    input.dataset.key = key;
    input.addEventListener("input", () => { markChanged(); schedulePlan(); });
    input.addEventListener("change", () => { markChanged(); schedulePlan(); });
    const field = el("div", { class: "field" }, el("label", { for: id, text: hasString(S.lang, "hyper_" + key) ? t("hyper_" + key) : key }), input);
    if (range) field.append(el("small", { id: hint, text: t("range", { lo: range[0], hi: range[1] }) }));
    return field;
  }));
  markChanged();
}

function readHyper() {
  const out = {};
  for (const input of $("hyper-fields").querySelectorAll("[data-key]")) {
    const key = input.dataset.key;
    if (input.type === "checkbox") out[key] = input.checked;
    else if (input.type === "number") out[key] = input.value === "" ? null : Number(input.value);
    else out[key] = input.value;
  }
  return out;
}

function overrides() {
  const defaults = hyperDefaults(), now = readHyper(), out = {};
  for (const [k, v] of Object.entries(now)) if (v !== defaults[k] && v !== null) out[k] = v;
  return out;
}

function markChanged() {
  const changed = overrides();
  for (const input of $("hyper-fields").querySelectorAll("[data-key]")) {
    const field = input.closest(".field");
    const is = input.dataset.key in changed;
    field.classList.toggle("changed", is);
    input.setAttribute("aria-description", is ? t("changed") : "");
  }
}

function choosePreset(id) {
  S.preset = S.catalog.presets.find((p) => p.id === id) || S.catalog.presets[0];
  renderHyper(false);
  schedulePlan();
}

async function loadCatalog() {
  const [catalog, gpus] = await Promise.all([api("GET", "/presets"), api("GET", "/gpus")]);
  S.catalog = catalog;
  renderFamilies(); renderGpus(gpus);
  S.preset = catalog.presets.find((p) => p.id === "fotostudio") || catalog.presets[0];
  renderPresets(); renderHyper(false);
}

/* ---- dataset ---- */
async function loadDatasets() {
  const list = await api("GET", "/datasets");
  const sel = $("dataset-select"), keep = S.dataset ? S.dataset.name : sel.value;
  sel.replaceChildren(el("option", { value: "", text: t("dataset_none") }),
                      ...list.map((d) => el("option", { value: d.name, text: d.name + (d.owner && d.owner !== S.user ? " (" + d.owner + ")" : "") })));
  sel.value = list.some((d) => d.name === keep) ? keep : "";
}

function renderChosenFiles() {
  const files = [...$("dataset-files").files];
  const names = files.slice(0, 3).map((f) => f.name).join(", ") + (files.length > 3 ? ", …" : "");
  $("dataset-files-chosen").textContent = files.length ? t("files_chosen", { n: files.length, names }) : t("files_none");
}

async function upload(ev) {
  ev.preventDefault();
  const files = $("dataset-files").files;
  const form = new FormData();
  form.append("name", $("dataset-name").value.trim());
  // Image sizes are judged for the resolution chosen now; a plan at another resolution re-judges them (rejudgeSizes).
  form.append("family", $("family").value);
  if (S.preset) form.append("preset", S.preset.id);
  const px = readHyper().resolution;
  if (px) form.append("resolution", String(px));
  for (const f of files) form.append("files", f, f.name);
  say("upload-status", "uploading", { n: files.length });
  $("upload-button").disabled = true;
  try {
    const view = await api("POST", "/datasets", form);
    showDataset(view);
    say("upload-status", "uploaded", { n: view.images.length });
    await loadDatasets();
  } catch (e) { setStatus("upload-status", e.describe ? e.describe() : String(e), true); }
  finally { $("upload-button").disabled = false; }
}

async function pickDataset() {
  const name = $("dataset-select").value;
  if (!name) return;
  try { showDataset(await api("GET", "/datasets/" + encodeURIComponent(name))); say("upload-status", "dataset_loaded", { name, n: S.dataset.images.length }); }
  catch (e) { setStatus("upload-status", e.describe(), true); }
}

function showDataset(view) {
  S.dataset = view;
  if (!$("output-name").value) $("output-name").value = view.name;
  fillCard(view.card);
  renderDataset(view);
  schedulePlan();
}

function problemItem(p) {
  return el("li", { class: p.severity === "error" ? "sev-error" : "sev-warning" },
    el("strong", { text: t(p.severity === "error" ? "severity_error" : "severity_warning") + ": " }),
    p.message, p.hint ? el("span", { class: "hint", text: " → " + p.hint }) : null);
}

function renderDataset(view) {
  $("dataset-result").hidden = false;
  const errors = view.problems.filter((p) => p.severity === "error").length
    + view.images.reduce((n, im) => n + im.problems.filter((p) => p.severity === "error").length, 0);
  $("dataset-blocking").hidden = !view.blocking;
  $("dataset-blocking").textContent = t("dataset_blocking", { n: Math.max(errors, 1) });
  $("dataset-ok").hidden = view.blocking;
  $("dataset-resolution").textContent = view.resolution ? t("dataset_resolution", { px: view.resolution }) : "";
  $("dataset-problems").replaceChildren(...view.problems.concat(view.card_problems || []).map(problemItem));
  $("dataset-images").replaceChildren(...view.images.map((im) => {
    const bad = im.problems.some((p) => p.severity === "error");
    return el("li", { class: bad ? "bad" : im.problems.length ? "warn" : "", "data-file": im.file },
      im.thumb_url ? apiImage(im.thumb_url, { alt: im.caption || im.file, width: 128, height: 128 })
                   : el("div", { class: "nothumb", "aria-hidden": "true", text: "✕" }),
      el("span", { class: "file", text: im.file }),
      el("span", { class: "muted", text: (im.width && im.height ? im.width + "×" + im.height + " · " : "") + (im.caption || t("no_caption")) }),
      im.problems.length ? el("ul", { class: "problems" }, ...im.problems.map(problemItem)) : null);
  }));
}

/* ---- dataset card ---- */
const CARD_FIELDS = ["title", "source", "rights_holder", "licence", "consent", "cultural_context", "approved_by", "description"];
const CARD_OPTIONAL = ["language", "tags"];

function fillCard(card) {
  for (const f of [...CARD_FIELDS, ...CARD_OPTIONAL]) {
    const v = card ? (f === "licence" ? card.licence || card.license : card[f]) : "";
    $("card-" + f).value = Array.isArray(v) ? v.join(", ") : v || "";
  }
}

async function saveCard(ev) {
  ev.preventDefault();
  if (!S.dataset) { say("card-status", "card_need_dataset", null, true); return; }
  const missing = CARD_FIELDS.filter((f) => !$("card-" + f).value.trim());
  for (const f of CARD_FIELDS) $("card-" + f).setAttribute("aria-invalid", missing.includes(f) ? "true" : "false");
  if (missing.length) {
    say("card-status", "card_missing", { fields: missing.map((f) => t("card_" + f)).join(", ") }, true);
    $("card-" + missing[0]).focus(); return;
  }
  const card = {};
  for (const f of CARD_FIELDS) card[f] = $("card-" + f).value.trim();
  if ($("card-language").value.trim()) card.language = $("card-language").value.trim();
  card.tags = $("card-tags").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    S.dataset = await api("PUT", "/datasets/" + encodeURIComponent(S.dataset.name) + "/card", card);
    renderDataset(S.dataset);
    say("card-status", "card_saved", null);
    schedulePlan();
  } catch (e) { setStatus("card-status", e.describe(), true); }
}

/* ---- plan, command, create ---- */
function planBody() {
  return { dataset: S.dataset ? S.dataset.name : "", family: $("family").value, preset: S.preset ? S.preset.id : "",
           output_name: $("output-name").value.trim(), trigger: $("trigger").value.trim() || null,
           backend: $("backend").value, gpu: $("gpu").value, overrides: overrides() };
}

function schedulePlan() {
  clearTimeout(S.planTimer);
  S.planTimer = setTimeout(makePlan, 350);
}

async function makePlan() {
  if (!S.dataset || !S.preset || !$("output-name").value.trim()) { say("plan-status", "plan_wait", null); return; }
  say("plan-status", "plan_busy", null);
  const body = planBody();
  try {
    const res = await api("POST", "/plans", body);
    if (JSON.stringify(body) !== JSON.stringify(planBody())) return;  // the form changed meanwhile; a newer plan follows
    renderPlan(res);
  } catch (e) {
    S.plan = null; S.command = ""; $("command").textContent = ""; $("plan-output").hidden = true;  // no stale command
    setStatus("plan-status", e.describe(), true);
    $("plan-problems").replaceChildren(...e.fields.map((f) => el("li", { class: "sev-error", text: f.field + ": " + f.message })));
  }
}

async function rejudgeSizes(px) {
  const ds = S.dataset;
  if (!ds || !px || ds.resolution === px) return;
  const owner = ds.owner && ds.owner !== S.user ? "&owner=" + encodeURIComponent(ds.owner) : "";
  try {
    const view = await api("GET", "/datasets/" + encodeURIComponent(ds.name) + "?resolution=" + px + owner);
    if (S.dataset && S.dataset.name === ds.name) { S.dataset = view; renderDataset(view); }
  } catch (e) { setStatus("upload-status", e.describe ? e.describe() : String(e), true); }
}

function renderPlan(res) {
  S.plan = res;
  $("plan-output").hidden = false;
  const plan = res.plan || {}, hyper = plan.hyper || {}, mem = res.memory || plan.memory || {};
  rejudgeSizes(hyper.resolution);
  const problems = res.problems || [];
  say("plan-status", problems.some((p) => p.severity === "error") ? "plan_bad" : "plan_ok");
  $("plan-problems").replaceChildren(...problems.map(problemItem));
  const facts = [["fact_images", plan.num_images], ["fact_steps", hyper.max_train_steps], ["fact_epochs", hyper.epochs],
                 ["fact_resolution", hyper.resolution ? hyper.resolution + " px" : null],
                 ["fact_peak", mem.estimated_peak_vram_gb !== undefined ? mem.estimated_peak_vram_gb.toFixed(1) + " GB" : null],
                 ["fact_ram", mem.estimated_host_ram_gb !== undefined ? mem.estimated_host_ram_gb.toFixed(0) + " GB" : null],
                 ["fact_time", mem.estimated_wall_time_s !== undefined ? fmtEta(mem.estimated_wall_time_s) : null]];
  $("plan-facts").replaceChildren(...facts.filter((f) => f[1] !== null && f[1] !== undefined)
    .flatMap(([k, v]) => [el("dt", { text: t(k) }), el("dd", { text: String(v) })]));
  // One line per decision (the plan's explanations); the memory's own summary when there are none.
  const lines = (plan.explanations && plan.explanations.length) ? plan.explanations : String(mem.explanation || "").split("\n");
  $("plan-memory").replaceChildren(...lines.filter(Boolean).map((l) => el("li", { text: l })));
  S.command = res.command || "";
  $("command").textContent = S.command;
}

async function copyCommand() {
  const text = S.command;
  try {
    await navigator.clipboard.writeText(text);
    say("copy-status", "copied", null);
  } catch (e) {  // no clipboard API (plain http on another host): select the text for Ctrl+C
    const range = document.createRange(); range.selectNodeContents($("command"));
    const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
    say("copy-status", document.execCommand && document.execCommand("copy") ? "copied" : "copy_failed");
  }
}

async function createJob() {
  const body = planBody();
  if (S.parent) body.parent = S.parent;
  $("create-job").disabled = true;
  try {
    const job = await api("POST", "/jobs", body);
    S.parent = null;
    say("create-status", "job_created", { id: job.id });
    await loadJobs();
    openJob(job.id);
  } catch (e) { setStatus("create-status", e.describe(), true); }
  finally { $("create-job").disabled = false; }
}

/* ---- jobs table ---- */
async function loadJobs() {
  if (!S.user && !(S.me && S.me.mounted)) return;
  try {
    const teacher = Boolean(S.me && S.me.teacher);
    const res = await api("GET", "/jobs" + (teacher ? ($("all-jobs").checked ? "?all=1" : "?all=0") : ""));
    S.jobs = res.jobs || []; S.queue = res.queue || [];
    renderJobs();
  } catch (e) { setStatus("create-status", e.describe(), true); }
}

function progressOf(job) {
  const p = job.progress || {};
  return { step: p.step || 0, total: p.total || 0, loss: p.loss, eta: p.eta_s };
}

function renderJobs() {
  // The table is redrawn every few seconds: whoever had the focus on a row's button keeps it.
  const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("#jobs-body tr");
  const focusedJob = focused ? focused.dataset.job : null;
  drawJobRows();
  if (focusedJob) {
    const again = document.querySelector('#jobs-body tr[data-job="' + CSS.escape(focusedJob) + '"] button.open-job');
    if (again) again.focus();
  }
}

function drawJobRows() {
  $("jobs-empty").hidden = S.jobs.length > 0;
  $("jobs-body").replaceChildren(...S.jobs.map((job) => {
    const p = progressOf(job);
    return el("tr", { "data-job": job.id, "data-state": job.state },
      el("th", { scope: "row", "data-label": t("col_job") }, el("span", {}, el("button", { type: "button", class: "open-job linklike", "aria-label": t("open_job", { id: job.id }),
                                                 onclick: () => openJob(job.id), text: job.output_name || job.id }),
         el("small", { class: "muted", text: " " + job.id }))),
      el("td", { "data-label": t("col_state"), class: "state state-" + job.state, text: t("state_" + job.state) }),
      el("td", { "data-label": t("col_progress") }, el("progress", { max: Math.max(p.total, 1), value: p.step, "aria-label": t("progress_text", { step: p.step, total: p.total, pct: p.total ? Math.round(100 * p.step / p.total) : 0 }) })),
      el("td", { "data-label": t("col_loss"), class: "loss", text: formatLoss(p.loss) }),
      el("td", { "data-label": t("col_eta"), text: ACTIVE.includes(job.state) ? fmtEta(p.eta) : "–" }),
      el("td", { "data-label": t("col_owner"), text: job.owner || "" }),
      el("td", { "data-label": t("col_parent"), text: job.parent || "" }),
      el("td", { "data-label": t("col_queue"), text: job.queue_position === null || job.queue_position === undefined ? "" : String(job.queue_position) }));
  }));
}

/* ---- start ---- */
function poll() {
  setTimeout(async () => {
    if (!document.hidden && !$("studio-view").hidden) await loadJobs();
    poll();
  }, 3000);
}

async function start() {
  S.lang = localStorage.getItem(LANG_KEY) || ((navigator.language || "en").startsWith("de") ? "de" : "en");
  S.user = localStorage.getItem(USER_KEY);
  $("lang-toggle").addEventListener("click", () => { S.lang = S.lang === "de" ? "en" : "de"; localStorage.setItem(LANG_KEY, S.lang); applyLang(); });
  $("user-form").addEventListener("submit", saveUser);
  $("user-dialog").addEventListener("cancel", (ev) => { if (!S.user) ev.preventDefault(); });
  $("user-change").addEventListener("click", askUser);
  $("upload-form").addEventListener("submit", upload);
  $("dataset-files").addEventListener("change", renderChosenFiles);
  $("dataset-select").addEventListener("change", pickDataset);
  $("card-form").addEventListener("submit", saveCard);
  for (const id of ["output-name", "trigger", "family", "backend", "gpu"]) $(id).addEventListener("change", schedulePlan);
  $("output-name").addEventListener("input", schedulePlan);
  $("hyper-reset").addEventListener("click", () => { renderHyper(false); schedulePlan(); });
  $("copy-command").addEventListener("click", copyCommand);
  $("create-job").addEventListener("click", createJob);
  $("jobs-refresh").addEventListener("click", loadJobs);
  $("all-jobs").addEventListener("change", loadJobs);
  $("job-back").addEventListener("click", closeJob);
  $("job-run").addEventListener("click", () => runJob("/run"));
  $("job-resume").addEventListener("click", () => runJob("/resume"));
  $("job-cancel").addEventListener("click", cancelJob);
  $("job-install").addEventListener("click", installJob);
  $("job-variant").addEventListener("click", variantJob);
  $("job-delete").addEventListener("click", deleteJob);
  window.addEventListener("resize", () => { if (S.job && !$("job-view").hidden) drawChart(); });
  applyLang();
  try {
    await loadMe();
    await loadCatalog();
    applyLang();
    if (!S.user && !S.me.mounted) askUser();
    else { await loadDatasets(); await loadJobs(); }
  } catch (e) {
    const box = $("notice"); box.hidden = false; box.textContent = e.describe ? e.describe() : String(e);
  }
  poll();
}

document.addEventListener("DOMContentLoaded", start);
