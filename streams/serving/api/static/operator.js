// The operator page (人群透视): members per tag, tier, lifecycle stage and RFM cell, tag
// populations over time, and guides' task completion, drawn as inline SVG by this file alone
// (no chart library, no CDN: the page works with no internet).
//
// Sign-in and the API calls are the guide page's (session.js): one sign-in serves both pages in
// a tab, and the token travels only in the Authorization header. An operator sees everyone or
// picks a guide; a guide's token sees that guide's members only.
// Every drawn mark carries data-key and data-count, the numbers it was drawn from.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_SERIES = 6;
const PREFERRED_TRENDS = ["member", "repeat_buyer", "high_value", "dormant_90d", "churn_risk"];

const state = { me: null, insight: null, trendTags: null, run: 0 };

const $ = (id) => document.getElementById(id);
const fmt = (n) => Number(n).toLocaleString("zh-CN");
const pct = (x) => `${(x * 100).toFixed(x >= 0.1 || x === 0 ? 0 : 1)}%`;

// --- sign in -------------------------------------------------------------------------------

async function signIn(token) {
  session.token = token;
  const me = await api("/me");
  session.remember(token);
  state.me = me;
  $("who-name").textContent = me.operator ? "运营" : `导购 ${me.guide}`;
  $("who").hidden = false;
  $("sign-in").hidden = true;
  $("dashboard").hidden = false;
  const select = $("guide-select");
  select.replaceChildren();
  if (me.operator) {
    select.append(new Option("全部会员", ""));
  } else {
    select.append(new Option(`我的会员（${me.guide}）`, me.guide));
    select.disabled = true;
  }
  await refresh();
}

function signOut(message) {
  session.forget();
  state.me = null;
  state.insight = null;
  state.run += 1;
  $("dashboard").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  const error = $("sign-in-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("token").value = "";
  $("token").focus();
}

// --- loading -------------------------------------------------------------------------------

function scopeQuery() {
  const guide = $("guide-select").value;
  return guide ? `guide=${encodeURIComponent(guide)}` : "";
}

async function refresh() {
  const run = ++state.run;
  const error = $("dashboard-error");
  error.hidden = true;
  try {
    const insight = await api(`/insights/tags?${scopeQuery()}`);
    if (run !== state.run) return;
    state.insight = insight;
    if (insight.guides) fillGuides(insight.guides);
    $("total-members").textContent = fmt(insight.members);
    $("total-members").dataset.count = insight.members;
    $("as-of").textContent = `统计时间 ${insight.as_of.slice(0, 16).replace("T", " ")}`;
    drawTiers(insight.tiers, insight.members);
    drawFunnel(insight.lifecycle);
    drawRfm(insight.rfm);
    drawTags(insight.tags);
    pickTrendTags(insight.tags);
    await Promise.all([loadTrend(run), loadTasks(run)]);
    document.body.dataset.loaded = String(run);
  } catch (err) {
    if (err.status === 401) return;
    error.textContent = `加载失败：${err.message}`;
    error.hidden = false;
  }
}

function fillGuides(guides) {
  const select = $("guide-select");
  const chosen = select.value;
  select.replaceChildren(new Option("全部会员", ""));
  for (const g of guides) select.append(new Option(`导购 ${g.guide}（${fmt(g.members)} 人）`, g.guide));
  select.value = chosen;
}

async function loadTrend(run) {
  const chart = $("trend-chart");
  if (!state.trendTags.length) {
    chart.replaceChildren(empty("请选择标签"));
    return;
  }
  const days = $("days-select").value;
  const tags = state.trendTags.map((t) => `tag=${encodeURIComponent(t)}`).join("&");
  const scope = scopeQuery();
  const history = await api(`/insights/tags/history?${tags}&days=${days}${scope ? "&" + scope : ""}`);
  if (run !== state.run) return;
  drawTrend(history);
}

async function loadTasks(run) {
  const chart = $("task-chart");
  let body = null;
  try {
    body = await api(`/insights/tasks?${scopeQuery()}`);
  } catch (err) {
    if (err.status === 401) throw err;
  }
  if (run !== state.run) return;
  const guides = body && Array.isArray(body.guides) ? body.guides : [];
  if (!guides.length) {
    chart.replaceChildren(empty("暂无任务数据", "task-empty"));
    return;
  }
  drawTasks(guides);
}

// --- drawing -------------------------------------------------------------------------------

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(width, height) {
  return el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
}

function empty(text, id) {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = text;
  if (id) p.id = id;
  return p;
}

function mark(node, key, count) {
  node.setAttribute("data-key", key);
  node.setAttribute("data-count", String(count));
  return node;
}

// Horizontal bars: one row per item, the label left, the count (and share) right of the bar.
function bars(rows, { total = null, labelWidth = 120, width = 560, alt = false } = {}) {
  const rowH = 26;
  const max = Math.max(1, ...rows.map((r) => r.count));
  const area = width - labelWidth - 110;
  const out = svg(width, rows.length * rowH + 8);
  rows.forEach((r, i) => {
    const y = 4 + i * rowH;
    out.append(el("text", { x: labelWidth - 8, y: y + 17, "text-anchor": "end", class: "label" }, r.label));
    const w = Math.max(r.count > 0 ? 2 : 0, (r.count / max) * area);
    out.append(mark(el("rect", { x: labelWidth, y: y + 4, width: w, height: rowH - 8, rx: 3,
                                 class: alt ? "bar alt" : "bar" }), r.key, r.count));
    const share = total ? ` · ${pct(total ? r.count / total : 0)}` : "";
    out.append(mark(el("text", { x: labelWidth + w + 6, y: y + 17, class: "value" },
                       `${fmt(r.count)}${share}`), r.key, r.count));
  });
  return out;
}

function drawTiers(tiers, members) {
  const chart = $("tier-chart");
  if (!tiers.length) { chart.replaceChildren(empty("规则包未启用会员等级")); return; }
  chart.replaceChildren(bars(tiers.map((t) => ({ key: t.tag, label: t.name_zh, count: t.members })),
                             { total: members, alt: true }));
}

// The funnel: stages in the order members live through them, each bar centred, its width the
// stage's share of the largest stage.
function drawFunnel(stages) {
  const chart = $("funnel-chart");
  if (!stages.length) { chart.replaceChildren(empty("规则包没有生命周期标签")); return; }
  const width = 560, rowH = 40, labelWidth = 90;
  const max = Math.max(1, ...stages.map((s) => s.members));
  const total = stages.reduce((a, s) => a + s.members, 0);
  const area = width - labelWidth - 20;
  const out = svg(width, stages.length * rowH + 6);
  stages.forEach((s, i) => {
    const y = 3 + i * rowH;
    const w = Math.max(s.members > 0 ? 4 : 0, (s.members / max) * area);
    const x = labelWidth + (area - w) / 2;
    out.append(el("text", { x: labelWidth - 8, y: y + 24, "text-anchor": "end", class: "label" }, s.name_zh));
    const rect = mark(el("rect", { x, y: y + 4, width: w, height: rowH - 8, rx: 4, class: "bar" }), s.tag, s.members);
    rect.setAttribute("fill-opacity", String(1 - i * 0.12));
    out.append(rect);
    const share = total ? pct(s.members / total) : "0%";
    const inside = w > 150;  // the text fits in the bar; else it goes right of it
    out.append(mark(el("text", { x: inside ? labelWidth + area / 2 : x + w + 8, y: y + 24,
                                 "text-anchor": inside ? "middle" : "start",
                                 class: inside ? "value inside" : "value" },
                       `${fmt(s.members)} 人 · ${share}`), s.tag, s.members));
  });
  chart.replaceChildren(out);
}

// RFM: two 2x2 grids, M high then M low; rows R (high on top), columns F (high on the left).
function drawRfm(cells) {
  const chart = $("rfm-chart");
  if (!cells.length) { chart.replaceChildren(empty("规则包没有 RFM 分层")); return; }
  const width = 560, cell = 118, gap = 6, top = 34, left = 46;
  const out = svg(width, top + 2 * cell + gap + 30);
  const max = Math.max(1, ...cells.map((c) => c.members));
  const level = { high: "高", low: "低" };
  ["high", "low"].forEach((m, g) => {
    const x0 = left + g * (2 * cell + gap + 30);
    out.append(el("text", { x: x0 + cell + gap / 2, y: 14, "text-anchor": "middle", class: "label" }, `M ${level[m]}（消费金额）`));
    ["high", "low"].forEach((f, col) => {
      out.append(el("text", { x: x0 + col * (cell + gap) + cell / 2, y: top - 4, "text-anchor": "middle", class: "tick" }, `F ${level[f]}`));
    });
    ["high", "low"].forEach((r, row) => {
      if (g === 0) {
        out.append(el("text", { x: left - 8, y: top + row * (cell + gap) + cell / 2 + 4, "text-anchor": "end", class: "tick" }, `R ${level[r]}`));
      }
      ["high", "low"].forEach((f, col) => {
        const c = cells.find((x) => x.r === r && x.f === f && x.m === m);
        if (!c) return;
        const x = x0 + col * (cell + gap), y = top + row * (cell + gap);
        const rect = mark(el("rect", { x, y, width: cell, height: cell, rx: 6, class: "bar" }), c.tag, c.members);
        rect.setAttribute("fill-opacity", String(0.12 + 0.78 * (c.members / max)));
        out.append(rect);
        const strong = c.members / max > 0.5;
        out.append(el("text", { x: x + cell / 2, y: y + cell / 2 - 8, "text-anchor": "middle",
                                class: strong ? "cell-name value inside" : "cell-name label" }, c.name_zh));
        out.append(mark(el("text", { x: x + cell / 2, y: y + cell / 2 + 18, "text-anchor": "middle",
                                     class: strong ? "cell-count value inside" : "cell-count label" }, fmt(c.members)), c.tag, c.members));
      });
    });
  });
  chart.replaceChildren(out);
}

function drawTags(tags) {
  const chart = $("tag-chart");
  const held = tags.filter((t) => t.members > 0).sort((a, b) => b.members - a.members);
  if (!held.length) { chart.replaceChildren(empty("暂无会员")); return; }
  chart.replaceChildren(bars(held.map((t) => ({ key: t.id, label: t.name_zh, count: t.members })),
                             { total: state.insight.members, labelWidth: 150, width: 1200 }));
}

function pickTrendTags(tags) {
  const picker = $("tag-picker");
  const choices = tags.filter((t) => !["tier", "lifecycle", "rfm"].includes(t.family));
  if (state.trendTags === null) {
    const preferred = PREFERRED_TRENDS.filter((id) => choices.some((t) => t.id === id));
    state.trendTags = preferred.length ? preferred : choices.slice(0, 3).map((t) => t.id);
  }
  picker.replaceChildren();
  for (const t of choices) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = t.id;
    box.checked = state.trendTags.includes(t.id);
    box.addEventListener("change", () => {
      if (box.checked && state.trendTags.length >= MAX_SERIES) {
        box.checked = false;
        return;
      }
      state.trendTags = box.checked ? [...state.trendTags, t.id]
                                    : state.trendTags.filter((x) => x !== t.id);
      pickTrendTags(state.insight.tags);
      loadTrend(state.run).catch(() => {});
    });
    const index = state.trendTags.indexOf(t.id);
    const swatch = document.createElement("span");
    swatch.className = index >= 0 ? `swatch s${index + 1}` : "swatch";
    label.append(box, swatch, document.createTextNode(t.name_zh));
    picker.append(label);
  }
}

// Lines over the days; a day without a snapshot is a gap, not a zero.
function drawTrend(history) {
  const chart = $("trend-chart");
  const width = 1200, height = 280, left = 56, right = 16, top = 12, bottom = 28;
  const values = history.series.flatMap((s) => s.members.filter((v) => v !== null));
  if (!values.length) { chart.replaceChildren(empty("暂无快照：每天零点后由 Redis sink 保存一次")); return; }
  const max = Math.max(1, ...values);
  const n = history.dates.length;
  const xAt = (i) => left + (n === 1 ? (width - left - right) / 2 : (i * (width - left - right)) / (n - 1));
  const yAt = (v) => top + (height - top - bottom) * (1 - v / max);
  const out = svg(width, height);
  for (let k = 0; k <= 4; k++) {
    const v = Math.round((max * k) / 4);
    out.append(el("line", { x1: left, x2: width - right, y1: yAt(v), y2: yAt(v), class: k ? "grid" : "axis" }));
    out.append(el("text", { x: left - 6, y: yAt(v) + 4, "text-anchor": "end", class: "tick" }, fmt(v)));
  }
  const ticks = [...new Set([0, Math.floor((n - 1) / 2), n - 1])];
  for (const i of ticks) {
    out.append(el("text", { x: xAt(i), y: height - 8, "text-anchor": "middle", class: "tick" }, history.dates[i].slice(5)));
  }
  const radius = n > 60 ? 1.5 : 3;
  history.series.forEach((s, k) => {
    const cls = `s${(k % MAX_SERIES) + 1}`;
    let d = "", pen = false;
    s.members.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${xAt(i).toFixed(1)},${yAt(v).toFixed(1)}`;
      pen = true;
    });
    if (d) out.append(el("path", { d, class: `line ${cls}`, "data-key": s.tag }));
    s.members.forEach((v, i) => {
      if (v === null) return;
      const dot = mark(el("circle", { cx: xAt(i), cy: yAt(v), r: radius, class: `dot ${cls}` }), s.tag, v);
      dot.setAttribute("data-date", history.dates[i]);
      dot.append(el("title", {}, `${s.name_zh} ${history.dates[i]}：${fmt(v)} 人`));
      out.append(dot);
    });
  });
  chart.replaceChildren(out);
}

// Completion per guide: a bar for the last 7 days and one for the last 30.
function drawTasks(guides) {
  const chart = $("task-chart");
  const rows = [];
  for (const g of guides) {
    for (const w of g.windows || []) {
      const rate = typeof w.completion_rate === "number" ? w.completion_rate : 0;
      rows.push({ key: `${g.guide}:${w.days}`, label: `${g.guide} · ${w.days}天`, rate, w });
    }
  }
  // the value text ("100%（完成 12 / 新开 20）· 转化 33%") needs ~250 px right of a full bar
  const width = 560, rowH = 24, labelWidth = 150, area = width - labelWidth - 260;
  const out = svg(width, rows.length * rowH + 8);
  rows.forEach((r, i) => {
    const y = 4 + i * rowH;
    out.append(el("text", { x: labelWidth - 8, y: y + 16, "text-anchor": "end", class: "label" }, r.label));
    const rect = el("rect", { x: labelWidth, y: y + 4, width: Math.max(0, r.rate * area), height: rowH - 8, rx: 3,
                              class: r.w.days <= 7 ? "bar" : "bar alt" });
    rect.setAttribute("data-key", r.key);
    rect.setAttribute("data-rate", String(r.rate));
    out.append(rect);
    const conv = typeof r.w.conversion_rate === "number" ? ` · 转化 ${pct(r.w.conversion_rate)}` : "";
    const rate = typeof r.w.completion_rate === "number" ? pct(r.w.completion_rate) : "–";
    out.append(el("text", { x: labelWidth + r.rate * area + 6, y: y + 16, class: "value" },
                  `${rate}（完成 ${fmt(r.w.done || 0)} / 新开 ${fmt(r.w.opened || 0)}）${conv}`));
  });
  chart.replaceChildren(out);
}

// --- wiring --------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("guide-select").addEventListener("change", () => refresh());
  $("days-select").addEventListener("change", () => loadTrend(state.run).catch(() => {}));
  $("refresh").addEventListener("click", () => refresh());
  wireSignIn(signIn, signOut);
});
