/* LoRA Studio: the live loss chart, drawn as inline SVG from the progress events (no library).
   drawLossChart(svg, points, total) redraws the whole chart: points = [{step, loss}], total = planned steps
   (the x axis runs to it, so the line visibly grows towards the right edge while training); redraw on resize. */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function formatLoss(loss) {
  if (loss === null || loss === undefined || Number.isNaN(loss)) return "–";
  return Math.abs(loss) >= 0.1 ? loss.toFixed(3) : loss.toPrecision(3);
}

function drawLossChart(svg, points, total) {
  // The drawing is as wide as the element, so labels keep their size on a phone and on a wide screen.
  const W = Math.max(240, Math.round(svg.getBoundingClientRect().width) || 600), H = 240;
  const left = 56, right = 12, top = 12, bottom = 30;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const finite = points.filter((p) => Number.isFinite(p.loss) && Number.isFinite(p.step));
  svg.appendChild(svgEl("rect", { x: left, y: top, width: W - left - right, height: H - top - bottom,
                                  class: "chart-bg" }));
  const maxStep = Math.max(total || 0, ...finite.map((p) => p.step), 1);
  let lo = Math.min(...finite.map((p) => p.loss));
  let hi = Math.max(...finite.map((p) => p.loss));
  if (!finite.length) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { hi += 0.5 * Math.abs(hi || 1); lo -= 0.5 * Math.abs(lo || 1); }
  const pad = 0.06 * (hi - lo);  // the highest and lowest points stay inside the frame
  hi += pad; lo -= pad;
  const x = (s) => left + (s / maxStep) * (W - left - right);
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (H - top - bottom);
  for (let i = 0; i <= 4; i++) {  // horizontal grid with loss labels
    const v = lo + (i / 4) * (hi - lo);
    svg.appendChild(svgEl("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "chart-grid" }));
    svg.appendChild(svgEl("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "chart-label" },
                          formatLoss(v)));
  }
  for (const s of [0, Math.round(maxStep / 2), maxStep]) {  // step labels
    svg.appendChild(svgEl("text", { x: x(s), y: H - 10, "text-anchor": s === 0 ? "start" : s === maxStep ? "end" : "middle",
                                    class: "chart-label" }, String(s)));
  }
  if (finite.length) {
    const d = finite.map((p, i) => (i ? "L" : "M") + x(p.step).toFixed(1) + " " + y(p.loss).toFixed(1)).join(" ");
    svg.appendChild(svgEl("path", { d, class: "chart-line", "data-points": finite.length,
                                    "data-last-step": finite[finite.length - 1].step }));
    const last = finite[finite.length - 1];
    svg.appendChild(svgEl("circle", { cx: x(last.step), cy: y(last.loss), r: 4, class: "chart-dot" }));
  }
  svg.setAttribute("data-points", String(finite.length));
  return finite.length;
}
