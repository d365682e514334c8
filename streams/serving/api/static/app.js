// The guide page: sign in with a token, work through the to-do list (待办), watch live tag
// changes, open a member's profile.
//
// The token (session.js, shared with the operator page) travels in the Authorization header of
// every request, the live feed included: EventSource cannot send headers, so the feed is read
// with fetch() and parsed here, and a reconnect sends Last-Event-ID so nothing is missed.
//
// The to-do list is loaded once the feed is live and then kept by the feed's `task` events
// (each the task's whole newest state): an open one joins, a closed one leaves. A task's
// highest version wins, whichever of the list and the feed brings it first.
"use strict";

const FEED_LIMIT = 200;
const TODO_PAGE = 200;
const TODO_MAX = 1000;

const state = {
  me: null,
  tags: new Map(),      // tag id -> {name_zh, family}
  lastEventId: "",
  retryMs: 2000,
  feedAbort: null,
  feedRun: 0,
  membersCursor: null,
  tasks: new Map(),         // task id -> its newest record, open tasks only
  taskVersions: new Map(),  // task id -> the highest version seen (open or closed)
  todoLoaded: false,
};

const $ = (id) => document.getElementById(id);

// --- words ---------------------------------------------------------------------------------

const FAMILY = {
  collected: "基础", service: "服务", transaction: "交易", interaction: "互动", scan: "扫码",
  operational: "运营", model: "模型", lifecycle: "生命周期", rfm: "RFM", tier: "等级",
};
const TIER_CHANGE = {
  "tier.upgraded": "等级升级", "tier.downgraded": "等级降级",
  "tier.downgrade_warning": "降级预警", "points.expired": "积分过期",
  "points.expiry_warning": "积分即将过期",
};
const LIFECYCLE = {
  new: "新入会", first: "首购", active: "活跃复购", silent: "沉默", lost: "流失",
};
// What a rule's evidence field means, and the unit of its value.
const FIELDS = {
  "joined": ["已入会"],
  "orders.count": ["累计订单", "单"],
  "orders.distinct_days": ["下单天数", "天"],
  "orders.spend_fen": ["累计消费"],
  "orders.refund_fen": ["累计退款"],
  "orders.last_at": ["最近下单"],
  "orders.first_at": ["首次下单"],
  "joined_at": ["入会"],
  "guides.wecom_count": ["企微好友导购", "位"],
  "birthday_month": ["生日月份", "月"],
  "paid_orders": ["支付订单", "单"],
  "spend_fen": ["消费金额"],
  "refund_fen": ["退款金额"],
  "refunds": ["退款", "次"],
  "item_spend_fen": ["商品消费"],
  "premium_orders": ["高端订单", "单"],
  "baijiu_spend_fen": ["白酒消费"],
  "baijiu_orders": ["白酒订单", "单"],
  "wine_spend_fen": ["葡萄酒消费"],
  "wine_orders": ["葡萄酒订单", "单"],
  "interactions": ["互动", "次"],
  "coupons_redeemed": ["核销优惠券", "张"],
  "shares": ["分享", "次"],
  "verify_scans": ["验真扫码", "次"],
  "cap_scans": ["开盖扫码", "次"],
  "trial_skus": ["试用装", "个"],
  "net_spend_365d_fen": ["近365天净消费"],
  "days_since_order": ["距上次下单", "天"],
  "r_high": ["近期有购买"],
  "f_high": ["购买频次高"],
  "m_high": ["消费金额高"],
};

function fieldLabel(key) {
  let m = key.match(/^(.+)\[(\d+)d\]$/);
  if (m) {
    const [label, unit] = FIELDS[m[1]] || [m[1]];
    return [`近${m[2]}天${label}`, unit];
  }
  m = key.match(/^days_since\((.+)\)$/);
  if (m) {
    if (m[1] === "joined_at") return ["入会天数", "天"];
    if (m[1] === "orders.last_at") return ["距上次下单", "天"];
    return [`距${(FIELDS[m[1]] || [m[1]])[0]}`, "天"];
  }
  m = key.match(/^pending\((\w+),\s*(\d+)d\)$/);
  if (m) return [`${m[2]}天内未转正的${(FIELDS[m[1]] || [m[1]])[0]}`, "个"];
  return FIELDS[key] || [key];
}

function formatValue(key, value, unit) {
  if (value === true) return "是";
  if (value === false) return "否";
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") {
    if (/fen/.test(key)) return formatMoney(value);
    const text = value.toLocaleString("zh-CN", { maximumFractionDigits: 2 });
    return unit ? `${text} ${unit}` : text;
  }
  if (typeof value === "string" && /^\d{4}-\d\d-\d\dT/.test(value)) return formatTime(value, true);
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function formatMoney(fen) {
  return "¥" + (fen / 100).toLocaleString("zh-CN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

// Times are shown as written by the stream (the brand's local time, e.g. +08:00).
function formatTime(text, withYear) {
  const m = String(text || "").match(/^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)/);
  if (!m) return text || "—";
  return withYear ? `${m[1]}-${m[2]}-${m[3]} ${m[4]}:${m[5]}` : `${m[2]}-${m[3]} ${m[4]}:${m[5]}`;
}

function tagName(id) {
  const tag = state.tags.get(id);
  return tag ? tag.name_zh : id;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function evidenceList(evidence) {
  const entries = Object.entries(evidence || {});
  if (!entries.length) return null;
  return el("ul", { class: "evidence" }, entries.map(([key, value]) => {
    const [label, unit] = fieldLabel(key);
    return el("li", { title: key }, `${label}：`, el("span", { class: "value" }, formatValue(key, value, unit)));
  }));
}

function evidenceText(evidence) {
  return Object.entries(evidence || {}).map(([key, value]) => {
    const [label, unit] = fieldLabel(key);
    return `${label} ${formatValue(key, value, unit)}`;
  }).join("，");
}

// --- sign in / out -------------------------------------------------------------------------

async function signIn(token) {
  session.token = token;
  const me = await api("/me");
  session.remember(token);
  state.me = me;
  const catalogue = await api("/tags");
  state.tags = new Map(catalogue.tags.map((t) => [t.id, t]));
  showWorkspace();
}

function signOut(message) {
  session.forget();
  state.me = null;
  state.lastEventId = "";
  state.feedRun += 1;
  if (state.feedAbort) state.feedAbort.abort();
  $("workspace").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("feed").replaceChildren();
  $("members").replaceChildren();
  state.tasks.clear();
  state.taskVersions.clear();
  state.todoLoaded = false;
  $("todo").replaceChildren();
  $("profile-card").hidden = true;
  const error = $("sign-in-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("token").value = "";
  $("token").focus();
}

function showWorkspace() {
  const me = state.me;
  $("sign-in").hidden = true;
  $("workspace").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = me.operator ? "运营管理员（全部会员）" : `导购 ${me.guide}`;
  $("feed-hint").textContent = me.operator
    ? "所有会员的标签变化会实时出现在这里。"
    : "您的会员一有标签变化，就会出现在这里。";
  $("guide-input").hidden = !me.operator;
  $("todo-card").hidden = me.operator;  // a to-do list is one guide's
  const select = $("tag-filter");
  select.replaceChildren(el("option", { value: "" }, me.operator ? "按标签（必选其一）" : "全部会员"));
  const sorted = [...state.tags.values()].sort((a, b) => a.family.localeCompare(b.family));
  for (const tag of sorted) {
    select.append(el("option", { value: tag.id }, `${tag.name_zh}（${FAMILY[tag.family] || tag.family}）`));
  }
  startFeed();
  if (!me.operator) loadMembers(true);
}

// --- the live feed -------------------------------------------------------------------------

function setFeedStatus(stateName, text) {
  const status = $("feed-status");
  status.dataset.state = stateName;
  status.textContent = text;
}

function startFeed() {
  const run = ++state.feedRun;
  (async () => {
    while (session.token && run === state.feedRun) {
      const controller = new AbortController();
      state.feedAbort = controller;
      setFeedStatus("connecting", "连接中…");
      try {
        const headers = { Authorization: `Bearer ${session.token}`, Accept: "text/event-stream" };
        if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
        const res = await fetch("/feed", { headers, signal: controller.signal, cache: "no-store" });
        if (res.status === 401) { signOut("令牌无效或已失效，请重新登录。"); return; }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        setFeedStatus("live", "实时");
        // Loaded after the feed is live, so no task falls between the list and the feed.
        if (!state.todoLoaded && state.me && !state.me.operator) loadTodo();
        await readEvents(res.body, onFeedEvent);
      } catch (err) {
        if (controller.signal.aborted) return;
      }
      if (run !== state.feedRun) return;
      setFeedStatus("retrying", "重新连接中…");
      await new Promise((resolve) => setTimeout(resolve, state.retryMs));
    }
  })();
}

// Server-sent events, parsed as the HTML standard says (the parts this feed uses).
async function readEvents(body, handle) {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  let event = { type: "", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (line === "") {
        if (event.id !== null) state.lastEventId = event.id;
        if (event.data.length) handle(event.type || "message", event.data.join("\n"));
        event = { type: "", data: [], id: null };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") event.data.push(text);
      else if (field === "event") event.type = text;
      else if (field === "id") event.id = text;
      else if (field === "retry" && /^\d+$/.test(text)) state.retryMs = Number(text);
    }
  }
}

function onFeedEvent(type, data) {
  let change;
  try { change = JSON.parse(data); } catch { return; }
  if (type === "task" && state.me && !state.me.operator) takeTask(change);
  const item = type === "tier" ? tierItem(change) : type === "task" ? taskItem(change) : tagItem(change);
  const feed = $("feed");
  feed.prepend(item);
  while (feed.children.length > FEED_LIMIT) feed.lastChild.remove();
}

function memberButton(memberId) {
  return el("button", { type: "button", class: "member-link", "data-member": memberId,
                        onclick: () => openProfile(memberId) }, memberId);
}

// Where a tag came from (DESIGN.md "Tag change": source).
const SOURCE = { rule: "规则", guide: "导购打标", wecom: "企微打标", import: "活动导入" };

function sourceChip(source) {
  const key = source || "rule";
  return el("span", { class: "chip source", "data-source": key }, `来源：${SOURCE[key] || key}`);
}

function causeText(cause) {
  if (!cause) return "";
  if (cause.timer) return "定时规则到期";
  if (cause.event_id) return `事件 ${cause.event_id}`;
  return "";
}

function tagItem(change) {
  const added = change.op === "added";
  const name = change.name_zh || tagName(change.tag);
  const why = [evidenceText(change.evidence), causeText(change.cause)].filter(Boolean).join(" · ");
  return el("li", { class: "change fresh", "data-change": change.change_id, "data-kind": "tag" },
    el("time", { datetime: change.at }, formatTime(change.at)),
    el("div", { class: "line" },
      memberButton(change.member_id),
      el("span", { class: `badge ${added ? "added" : "removed"}` }, added ? "新增标签" : "移除标签"),
      el("span", { class: "tag-name" }, name),
      el("span", { class: "tag-id" }, change.tag),
      sourceChip(change.source)),
    el("div", { class: "why" }, why));
}

function tierItem(change) {
  const label = TIER_CHANGE[change.type] || change.type;
  const detail = change.from || change.to ? `${change.from || "—"} → ${change.to || "—"}` : "";
  const growth = change.growth !== undefined ? `成长值 ${change.growth}` : "";
  return el("li", { class: "change fresh", "data-change": change.change_id, "data-kind": "tier" },
    el("time", { datetime: change.at }, formatTime(change.at)),
    el("div", { class: "line" },
      memberButton(change.member_id),
      el("span", { class: "badge tier" }, label),
      el("span", { class: "tag-name" }, detail)),
    el("div", { class: "why" }, [growth, causeText(change.cause)].filter(Boolean).join(" · ")));
}

// --- the to-do list (待办) -----------------------------------------------------------------

const TASK_STATUS = { open: "新任务", done: "已完成", lapsed: "已失效", expired: "已过期", cancelled: "已取消" };
const PRIORITY = { high: "高", normal: "中", low: "低" };

// Keep a task's newest record: an open one is on the list, any other is off it.
function takeTask(task) {
  const seen = state.taskVersions.get(task.task_id) || 0;
  if (task.version <= seen) return;
  state.taskVersions.set(task.task_id, task.version);
  if (task.status === "open") state.tasks.set(task.task_id, task);
  else state.tasks.delete(task.task_id);
  renderTodo();
}

async function loadTodo() {
  state.todoLoaded = true;
  const errorBox = $("todo-error");
  errorBox.hidden = true;
  const guide = encodeURIComponent(state.me.guide);
  let cursor = null;
  try {
    do {
      const params = new URLSearchParams({ status: "open", limit: String(TODO_PAGE) });
      if (cursor) params.set("cursor", cursor);
      const page = await api(`/guides/${guide}/tasks?${params}`);
      for (const task of page.tasks) takeTask(task);
      cursor = page.next_cursor;
    } while (cursor && state.tasks.size < TODO_MAX);
  } catch (err) {
    if (err.status === 401) return;
    errorBox.textContent = `待办加载失败：${err.message}`;
    errorBox.hidden = false;
  }
  renderTodo();
}

function dueTime(task) {
  const t = Date.parse(task.due_at);
  return Number.isNaN(t) ? Infinity : t;
}

function renderTodo() {
  const now = Date.now();
  const tasks = [...state.tasks.values()].sort((a, b) =>
    dueTime(a) - dueTime(b) || (a.task_id < b.task_id ? -1 : a.task_id > b.task_id ? 1 : 0));
  const list = $("todo");
  // Keep an item whose done form is open, so typing a note survives a live update.
  const kept = new Map([...list.querySelectorAll("li.task")].map((li) => [li.dataset.task, li]));
  list.replaceChildren(...tasks.map((task) => {
    const old = kept.get(task.task_id);
    if (old && old.dataset.version === String(task.version) &&
        (old.querySelector(".done-form:not([hidden])") || old.classList.contains("submitted"))) {
      old.classList.toggle("overdue", dueTime(task) < now);
      return old;
    }
    return todoItem(task, now);
  }));
  if (!tasks.length) list.append(el("li", { class: "empty" }, state.todoLoaded ? "暂无待办，做得好！" : "加载中…"));
  const overdue = tasks.filter((t) => dueTime(t) < now).length;
  $("todo-count").textContent = tasks.length ? `${tasks.length} 项${overdue ? `，逾期 ${overdue}` : ""}` : "";
}

function todoItem(task, now) {
  const overdue = dueTime(task) < now;
  const note = el("textarea", { class: "note", maxlength: "500", rows: "2",
                                placeholder: "备注（可选），如：已电话联系，周末到店" });
  const message = el("p", { class: "error small", role: "alert", hidden: "" });
  const confirm = el("button", { type: "button", class: "primary confirm" }, "确认完成");
  const form = el("div", { class: "done-form", hidden: "" }, note,
    el("div", { class: "done-actions" }, confirm,
      el("button", { type: "button", class: "link cancel",
                     onclick: () => { form.hidden = true; open.hidden = false; } }, "取消")),
    message);
  const open = el("button", { type: "button", class: "done",
                              onclick: () => { form.hidden = false; open.hidden = true; note.focus(); } }, "完成");
  const item = el("li", { class: `task${overdue ? " overdue" : ""}`, "data-task": task.task_id,
                          "data-version": String(task.version), "data-priority": task.priority },
    el("div", { class: "task-head" },
      el("span", { class: "task-name" }, task.name_zh),
      el("span", { class: `badge priority ${task.priority}` }, `优先级${PRIORITY[task.priority] || task.priority}`),
      memberButton(task.member_id),
      el("time", { class: "due", datetime: task.due_at },
        overdue ? `已逾期 · 到期 ${formatTime(task.due_at)}` : `到期 ${formatTime(task.due_at)}`),
      open),
    el("p", { class: "script" }, task.script_zh),
    el("div", { class: "why" }, evidenceText(task.evidence)),
    form);
  confirm.addEventListener("click", () => markDone(task, item, note, confirm, message));
  return item;
}

async function markDone(task, item, note, confirm, message) {
  confirm.disabled = true;
  message.hidden = true;
  const text = note.value.trim();
  try {
    await api(`/guides/${encodeURIComponent(task.guide)}/tasks/${encodeURIComponent(task.task_id)}/done`,
              text ? { note: text } : {});
    // The worker closes the task; its `done` record on the feed takes it off the list.
    item.classList.add("submitted");
    item.querySelector(".done-form").replaceChildren(el("p", { class: "muted small" }, "已提交，等待确认…"));
  } catch (err) {
    if (err.status === 401) return;
    confirm.disabled = false;
    message.textContent = err.status === 409 ? "这个任务已不是待办（已完成、失效或过期）。"
      : `提交失败：${err.message}`;
    message.hidden = false;
  }
}

function taskItem(task) {
  const label = TASK_STATUS[task.status] || task.status;
  const at = task.status === "open" ? task.opened_at : task.closed_at;
  return el("li", { class: "change fresh", "data-change": `${task.task_id}@${task.version}`, "data-kind": "task" },
    el("time", { datetime: at }, formatTime(at)),
    el("div", { class: "line" },
      memberButton(task.member_id),
      el("span", { class: "badge task" }, `待办${label}`),
      el("span", { class: "tag-name" }, task.name_zh)),
    el("div", { class: "why" }, task.status === "open" ? task.script_zh : (task.note || "")));
}

// --- members and profiles ------------------------------------------------------------------

async function loadMembers(reset) {
  const errorBox = $("members-error");
  errorBox.hidden = true;
  const list = $("members");
  if (reset) { list.replaceChildren(); state.membersCursor = null; }
  const tag = $("tag-filter").value;
  let guide = state.me.operator ? $("guide-input").value.trim() : state.me.guide;
  const params = new URLSearchParams({ limit: "20" });
  if (state.membersCursor) params.set("cursor", state.membersCursor);
  let path;
  if (guide) {
    if (tag) params.set("tag", tag);
    path = `/guides/${encodeURIComponent(guide)}/members?${params}`;
  } else if (tag) {
    path = `/tags/${encodeURIComponent(tag)}/members?${params}`;
  } else {
    errorBox.textContent = "请填写导购 userid 或选择一个标签。";
    errorBox.hidden = false;
    return;
  }
  try {
    const page = await api(path);
    for (const profile of page.members) {
      list.append(el("li", {}, memberButton(profile.member_id),
        profile.tags.slice(0, 4).map((t) => el("span", { class: "chip" }, tagName(t.id))),
        profile.tags.length > 4 ? el("span", { class: "chip" }, `+${profile.tags.length - 4}`) : null));
    }
    if (!list.children.length) list.append(el("li", { class: "empty" }, "没有符合条件的会员"));
    state.membersCursor = page.next_cursor;
    $("members-more").hidden = !page.next_cursor;
  } catch (err) {
    if (err.status === 401) return;
    errorBox.textContent = err.status === 403 ? "您无权查看这些会员。" : `查询失败：${err.message}`;
    errorBox.hidden = false;
  }
}

async function openProfile(memberId) {
  const card = $("profile-card");
  const box = $("profile");
  card.hidden = false;
  $("profile-title").textContent = `会员 ${memberId}`;
  box.replaceChildren(el("p", { class: "muted" }, "加载中…"));
  let profile;
  try {
    profile = await api(`/members/${encodeURIComponent(memberId)}`);
  } catch (err) {
    if (err.status === 401) return;
    const text = err.status === 403 ? "该会员未绑定到您，无法查看。"
      : err.status === 404 ? "没有这个会员。" : `加载失败：${err.message}`;
    box.replaceChildren(el("p", { class: "error" }, text));
    return;
  }
  renderProfile(profile);
  card.scrollIntoView({ block: "nearest" });
}

function renderProfile(p) {
  const orders = p.orders || {};
  const facts = [
    ["入会时间", formatTime(p.joined_at, true)],
    p.tier ? ["会员等级", p.tier] : null,
    p.lifecycle ? ["生命周期", LIFECYCLE[p.lifecycle] || p.lifecycle] : null,
    ["累计订单", `${orders.count ?? 0} 单`],
    ["累计消费", formatMoney(orders.spend_fen || 0)],
    orders.refund_fen ? ["累计退款", formatMoney(orders.refund_fen)] : null,
    orders.last_at ? ["最近下单", formatTime(orders.last_at, true)] : null,
    ["专属导购", (p.guides || []).map((g) => g.userid).join("、") || "—"],
    ["营销同意", p.consent && p.consent.marketing === false
      ? "已撤回（企微不显示标签）" : "同意"],
    ["数据截至", formatTime(p.as_of, true)],
  ].filter(Boolean);
  const tags = (p.tags || []).map((held) => {
    const tag = state.tags.get(held.id);
    return el("div", { class: "held", "data-tag": held.id },
      el("div", { class: "held-head" },
        el("span", {},
          el("span", { class: "tag-name" }, tagName(held.id)), " ",
          el("span", { class: "tag-id" }, held.id), " ",
          tag ? el("span", { class: "chip" }, FAMILY[tag.family] || tag.family) : null, " ",
          sourceChip(held.source)),
        el("span", { class: "held-since" }, `自 ${formatTime(held.since, true)}`)),
      evidenceList(held.evidence) || el("p", { class: "muted small" }, "无证据记录"));
  });
  $("profile").replaceChildren(
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("h2", {}, `标签（${tags.length}）`),
    tags.length ? el("div", {}, tags) : el("p", { class: "empty" }, "暂无标签"));
}

// --- wiring --------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("members-form").addEventListener("submit", (e) => { e.preventDefault(); loadMembers(true); });
  $("members-more").addEventListener("click", () => loadMembers(false));
  $("lookup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("member-input").value.trim();
    if (id) openProfile(id);
  });
  $("profile-close").addEventListener("click", () => { $("profile-card").hidden = true; });
  $("todo-refresh").addEventListener("click", () => { if (state.me) loadTodo(); });
  setInterval(() => { if (state.me && !state.me.operator) renderTodo(); }, 60_000);  // overdue moves on
  wireSignIn(signIn, signOut);
});
