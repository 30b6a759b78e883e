/**
 * DOM and SVG helpers for the admin dashboard: elements built with text nodes (never innerHTML, so no
 * server string is ever parsed as markup), a two-line chart and a budget gauge, both inline SVG.
 */
const SVG = "http://www.w3.org/2000/svg";

/** An element with attributes (on* attributes become listeners) and children (strings become text). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) if (child !== "" && child != null) node.append(child);
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  for (const child of children) if (child !== "" && child != null) node.append(child);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (value != null) node.setAttribute(key, String(value));
  }
}

/** Remove every child. */
export function clear(node) {
  node.replaceChildren();
}

/**
 * The dashboard's one date format, for the chart's axis and tooltips and every table: "YYYY-MM-DD HH:MM" in
 * UTC (with `seconds`, ":SS" too), whatever the browser's locale or time zone. A time without a zone is UTC.
 */
export function fmtTime(iso, { seconds = false } = {}) {
  if (!iso) return "";
  const text = String(iso);
  const d = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : `${text}Z`);
  return Number.isNaN(d.getTime()) ? text : d.toISOString().slice(0, seconds ? 19 : 16).replace("T", " ");
}

/** A <time> showing `fmtTime(iso)`, its date and its hour each kept whole when a narrow column wraps it. */
export function timeEl(iso) {
  const [day, hour] = fmtTime(iso).split(" ");
  return el("time", { datetime: iso || "" }, el("span", {}, day || ""), hour ? " " : "", hour ? el("span", {}, hour) : "");
}

/**
 * An error code or job kind that wraps only after "_" or "." (a <wbr> there; CSS keeps the rest whole), so
 * `NOT_FOUND` never shows as `NOT_FO|UND`.
 */
export function code(text, attrs = {}) {
  const node = el("code", { ...attrs, class: `code${attrs.class ? ` ${attrs.class}` : ""}` });
  const parts = String(text ?? "").split(/(?<=[_.])/);
  parts.forEach((part, i) => {
    node.append(part);
    if (i < parts.length - 1) node.append(document.createElement("wbr"));
  });
  return node;
}

/** Requests and errors per bucket as two polylines on one scale, with a few time labels. */
export function lineChart(points, bucketMinutes, width = 600) {
  // Drawn at the container's pixel width (not stretched), so the labels keep their shape.
  const W = Math.max(240, Math.round(width)), H = 180, L = 36, R = 8, T = 8, B = 22;
  const max = Math.max(1, ...points.map((p) => p.requests), ...points.map((p) => p.errors));
  const x = (i) => L + (points.length > 1 ? (i * (W - L - R)) / (points.length - 1) : 0);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const line = (key) => points.map((p, i) => `${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `requests and errors per ${bucketMinutes} minute(s)` });
  for (const v of [0, max / 2, max]) {
    root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(svg("text", { x: 2, y: y(v) + 3 }, String(Math.round(v))));
  }
  // A label ("2026-12-03 17:40", about 90 px) every 140 px at most, none running past the right edge.
  const step = Math.max(1, Math.ceil(points.length / Math.max(1, Math.floor((W - L) / 140))));
  for (let i = 0; i < points.length; i += step) {
    if (x(i) - 12 + 92 > W) break;
    root.append(svg("text", { class: "axis-label", x: x(i) - 12, y: H - 6, "data-at": points[i].at }, fmtTime(points[i].at)));
  }
  root.append(svg("polyline", { class: "requests", points: line("requests") }));
  root.append(svg("polyline", { class: "errors", points: line("errors") }));
  // Tooltips: one invisible dot per bucket, titled with the same date format as the axis and the tables.
  points.forEach((p, i) => {
    root.append(svg("circle", { class: "point", cx: x(i).toFixed(1), cy: y(Math.max(p.requests, p.errors)).toFixed(1), r: 4,
      "data-at": p.at }, svg("title", {}, `${fmtTime(p.at)} UTC: ${p.requests} requests, ${p.errors} errors`)));
  });
  return root;
}

/** A half-circle gauge of the error budget left (0..1; negative when overspent). */
// `consumed` is the number of budgets spent (1.5: half a budget over); past 1 the gauge reads "exhausted"
// with that factor instead of a negative percentage.
export function gauge(name, remaining, caption, firing, consumed = 0) {
  const exhausted = consumed >= 1;
  const value = exhausted ? 0 : Math.max(0, Math.min(1, remaining));
  const state = firing || exhausted || remaining <= 0 ? "state-bad" : remaining < 0.25 ? "state-warn" : "state-ok";
  const r = 45, cx = 55, cy = 55;
  const angle = Math.PI * (1 - value);
  const end = [cx + r * Math.cos(angle), cy - r * Math.sin(angle)];
  const arc = (x, yy) => `M ${cx - r} ${cy} A ${r} ${r} 0 0 1 ${x.toFixed(2)} ${yy.toFixed(2)}`;
  const root = svg("svg", { viewBox: "0 0 110 66", role: "img", "aria-label": `${name} budget` },
    svg("path", { class: "track", d: arc(cx + r, cy) }),
    value > 0 ? svg("path", { class: `value ${state}`, d: arc(end[0], end[1]) }) : "",
    svg("text", { class: "pct", x: cx, y: cy - 4, "text-anchor": "middle" },
      exhausted ? `${consumed.toFixed(1)}×` : `${Math.round(remaining * 100)}%`),
  );
  return el("div", { class: "gauge", "data-slo": name, "data-state": state.replace("state-", ""),
    "data-exhausted": String(exhausted) },
    root,
    el("div", { class: "label" }, el("b", {}, name)),
    el("div", { class: "label muted" }, `${caption}${firing ? " · burning" : ""}`),
  );
}
