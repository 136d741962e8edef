// The dashboard: summary tiles, the live alert feed, accounts below their warning level and export tasks.
//
// Breaches arrive over the `quotaThresholdBreached` subscription, resumed after every reconnect with the id of
// the last event seen (afterId), so the server replays what happened while the page was away. Recoveries have no
// subscription of their own: they are read with the rest of the page (summary, table, exports) on each refresh,
// which runs whenever an event arrives. Everything is written with textContent: nothing from the API is parsed
// as HTML.

import { GraphQLWsClient } from "./gqlws.js";
import { LANGUAGES, apiLanguage, initialLanguage, t } from "./i18n.js";

const TOKEN_KEY = "uidhub.dashboard.token";
const LANG_KEY = "uidhub.dashboard.lang";
const FEED_LIMIT = 200;
const BELOW_LIMIT = 50;
const EXPORT_LIMIT = 8;
const REFRESH_DEBOUNCE_MS = 250;
// Consumption that crosses nothing changes the totals without any event; a slow poll keeps the tiles honest.
const REFRESH_EVERY_MS = 30000;
const MAX_EXPORT_SUBSCRIPTIONS = 10;

const ALERT_FIELDS = "id kind state available threshold occurredAt account { uid nickname }";
const EXPORT_FIELDS = "id kind format status progress rowCount fileName downloadUrl error createdAt";
const REFRESH_FIELDS = `
  summary { accounts frozen purchaseBanned shutdown belowWarningLevel totalQuota totalAvailable totalOutstanding }
  below: endUsers(first: ${BELOW_LIMIT}, filter: {belowWarningLevel: true},
                  orderBy: {field: AVAILABLE_QUOTA, direction: ASC}) {
    totalCount
    edges { node { uid nickname accountStatus quota { amount available warningLevel outstandingAmount } } }
  }
  recovered: alertEvents(first: 20, states: [RECOVERED]) { edges { node { ${ALERT_FIELDS} } } }
  exportTasks(first: ${EXPORT_LIMIT}) { edges { node { ${EXPORT_FIELDS} } } }`;
const INITIAL_QUERY = `query Dashboard { ${REFRESH_FIELDS}
  history: alertEvents(first: 30) { edges { node { ${ALERT_FIELDS} } } } }`;
const REFRESH_QUERY = `query DashboardRefresh { ${REFRESH_FIELDS} }`;
const BREACHES = `subscription Breaches($afterId: ID) { quotaThresholdBreached(afterId: $afterId) { ${ALERT_FIELDS} } }`;
const ACTIVITY = "subscription Activity { accountEvents { id } }";
const EXPORT_UPDATES = `subscription ExportUpdates($id: ID!) { exportTaskUpdated(id: $id) { ${EXPORT_FIELDS} } }`;
const START_EXPORT = `mutation StartBelowExport($language: Language!) {
  startExport(input: {kind: END_USERS, format: XLSX, language: $language, filter: {belowWarningLevel: true},
                      orderBy: {field: AVAILABLE_QUOTA, direction: ASC}}) {
    task { ${EXPORT_FIELDS} } userErrors { code message } } }`;

const $ = (id) => document.getElementById(id);

const state = {
  lang: "en",
  token: null,
  client: null,
  feed: new Map(), // id -> QuotaAlertEvent
  breachCursor: null, // afterId for the next (re)subscription
  summary: null,
  below: null,
  exports: new Map(), // id -> ExportTask
  exportSubs: new Map(), // id -> unsubscribe
  saved: new Map(), // export id -> file name saved
  connection: { state: "idle", attempt: 0, delayMs: 0 },
  refreshTimer: null,
  pollTimer: null,
  everConnected: false,
};

class Rejected extends Error {}

// ---------------------------------------------------------------- API over HTTP

async function gql(query, variables = {}) {
  const response = await fetch("/graphql", {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.token}` },
    body: JSON.stringify({ query, variables }),
  });
  if (response.status === 401) throw new Rejected("token rejected");
  const body = await response.json();
  if (body.errors && body.errors.length) throw new Error(body.errors.map((e) => e.message).join("; "));
  return body.data;
}

// The feed is ordered by event id, which the server hands out in the order events happened. The id is a
// base64url "QuotaAlertEvent:<n>" minted by the server this page ships with; occurredAt breaks any doubt.
function eventNumber(id) {
  try {
    const raw = atob(id.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((id.length + 3) % 4));
    const n = Number(raw.split(":")[1]);
    return Number.isFinite(n) ? n : 0;
  } catch {
    return 0;
  }
}

// afterId for an empty log: "after event 0", so a breach between the first read and the subscription is replayed.
const START_OF_LOG = btoa("QuotaAlertEvent:0").replace(/=+$/, "");

// ---------------------------------------------------------------- rendering

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function renderLabels() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : state.lang;
  document.title = t(state.lang, "title");
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(state.lang, node.dataset.i18n);
}

function renderState() {
  const { state: name, attempt, delayMs } = state.connection;
  const node = $("state");
  node.dataset.state = name;
  node.className = `state state-${name}`;
  let text = "";
  if (name === "connecting") text = t(state.lang, "connecting");
  else if (name === "connected") text = t(state.lang, "connected");
  else if (name === "rejected") text = t(state.lang, "rejected");
  else if (name === "reconnecting") {
    text = delayMs > 0
      ? t(state.lang, "reconnecting", { attempt, seconds: (delayMs / 1000).toFixed(1) })
      : t(state.lang, "reconnectingNow", { attempt });
  }
  node.textContent = text;
}

function renderSummary() {
  if (!state.summary) return;
  for (const [key, value] of Object.entries(state.summary)) {
    const node = $(`tile-${key}`);
    if (node) node.textContent = String(value); // Money stays the API's exact decimal string
  }
}

function severity(event) {
  if (event.state === "RECOVERED") return "ok";
  // A pool at or below zero is already past its credit line: more urgent than a warning.
  return event.available.startsWith("-") || /^0(\.0+)?$/.test(event.available) ? "critical" : "warning";
}

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString(state.lang === "zh" ? "zh-CN" : state.lang);
}

function renderFeed() {
  const list = $("feed");
  const events = [...state.feed.values()].sort(
    (a, b) => eventNumber(b.id) - eventNumber(a.id) || b.occurredAt.localeCompare(a.occurredAt),
  );
  const items = events.slice(0, FEED_LIMIT).map((event) => {
    const item = el("li", `alert sev-${severity(event)}`);
    item.dataset.id = event.id;
    item.dataset.state = event.state;
    item.dataset.uid = event.account.uid;
    const head = el("div", "alert-head");
    head.append(el("span", "badge", t(state.lang, event.state)));
    head.append(el("span", "who", event.account.nickname || event.account.uid));
    if (event.account.nickname) head.append(el("span", "uid", event.account.uid));
    const body = el("div", "alert-body");
    body.append(el("span", "kind", t(state.lang, event.kind)));
    body.append(el("span", "money", `${event.available} / ${t(state.lang, "threshold")} ${event.threshold}`));
    const time = el("time", "when", formatTime(event.occurredAt));
    time.dateTime = event.occurredAt;
    body.append(time);
    item.append(head, body);
    return item;
  });
  list.replaceChildren(...items);
  $("feed-empty").hidden = items.length > 0;
}

function renderBelow() {
  if (!state.below) return;
  const rows = state.below.edges.map(({ node }) => {
    const row = el("tr");
    row.dataset.uid = node.uid;
    const q = node.quota;
    for (const [value, cls] of [
      [node.uid, "uid"], [node.nickname ?? "", ""], [t(state.lang, node.accountStatus), "status"],
      [q?.amount ?? "", "num"], [q?.available ?? "", "num avail"], [q?.warningLevel ?? "", "num"],
      [q?.outstandingAmount ?? "", "num"],
    ]) row.append(el("td", cls, value));
    return row;
  });
  $("below-rows").replaceChildren(...rows);
  $("below-count").textContent = t(state.lang, "shown", { shown: rows.length, total: state.below.totalCount });
  $("below-empty").hidden = rows.length > 0;
}

function renderExports() {
  const tasks = [...state.exports.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  const items = tasks.slice(0, EXPORT_LIMIT).map((task) => {
    const item = el("li", `export status-${task.status}`);
    item.dataset.id = task.id;
    item.dataset.status = task.status;
    item.append(el("span", "export-name", task.fileName || `${task.kind} ${task.format}`));
    item.append(el("span", "export-status", t(state.lang, task.status)));
    const bar = el("progress", "export-progress");
    bar.max = 1;
    bar.value = task.progress;
    item.append(bar);
    if (task.status === "SUCCEEDED" && task.downloadUrl) {
      if (task.rowCount !== null) item.append(el("span", "export-rows", t(state.lang, "rows", { count: task.rowCount })));
      const button = el("button", "download", t(state.lang, "download"));
      button.type = "button";
      button.addEventListener("click", () => download(task));
      item.append(button);
      if (state.saved.has(task.id)) {
        item.append(el("span", "saved", `${t(state.lang, "saved")}: ${state.saved.get(task.id)}`));
      }
    } else if (task.status === "FAILED" && task.error) {
      item.append(el("span", "export-error", task.error));
    }
    return item;
  });
  $("exports").replaceChildren(...items);
  $("exports-empty").hidden = items.length > 0;
}

function renderAll() {
  renderLabels();
  renderState();
  renderSummary();
  renderFeed();
  renderBelow();
  renderExports();
}

function showError(message) {
  const node = $("error");
  node.textContent = message ? t(state.lang, "httpError", { message }) : "";
  node.hidden = !message;
}

// ---------------------------------------------------------------- data

function addEvents(events) {
  for (const event of events) state.feed.set(event.id, event);
  if (state.feed.size > FEED_LIMIT * 2) {
    const keep = [...state.feed.values()].sort((a, b) => eventNumber(b.id) - eventNumber(a.id)).slice(0, FEED_LIMIT);
    state.feed = new Map(keep.map((e) => [e.id, e]));
  }
  renderFeed();
}

function applyRefresh(data) {
  state.summary = data.summary;
  state.below = data.below;
  addEvents(data.recovered.edges.map((e) => e.node));
  for (const { node } of data.exportTasks.edges) state.exports.set(node.id, node);
  watchExports();
  renderSummary();
  renderBelow();
  renderExports();
}

async function refresh() {
  try {
    applyRefresh(await gql(REFRESH_QUERY));
    showError("");
  } catch (error) {
    handleFailure(error);
  }
}

/** Many events in a burst (a bulk change) make one refresh, not one per event. */
function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, REFRESH_DEBOUNCE_MS);
}

function handleFailure(error) {
  if (error instanceof Rejected) rejectToken();
  else showError(error.message);
}

function watchExports() {
  for (const task of state.exports.values()) {
    const active = task.status === "PENDING" || task.status === "RUNNING";
    if (!active || state.exportSubs.has(task.id) || !state.client) continue;
    if (state.exportSubs.size >= MAX_EXPORT_SUBSCRIPTIONS) break;
    const unsubscribe = state.client.subscribe(EXPORT_UPDATES, () => ({ id: task.id }), {
      next: (payload) => {
        const update = payload.data?.exportTaskUpdated;
        if (update) {
          state.exports.set(update.id, update);
          renderExports();
        }
      },
      error: () => state.exportSubs.delete(task.id),
      complete: () => state.exportSubs.delete(task.id),
    });
    state.exportSubs.set(task.id, unsubscribe);
  }
}

async function startExport() {
  try {
    const data = await gql(START_EXPORT, { language: apiLanguage(state.lang) });
    const { task, userErrors } = data.startExport;
    if (userErrors.length) throw new Error(userErrors.map((e) => e.message).join("; "));
    state.exports.set(task.id, task);
    watchExports();
    renderExports();
  } catch (error) {
    handleFailure(error);
  }
}

/** Downloads need the bearer token, which a plain link cannot send: fetch, then save the blob. */
async function download(task) {
  try {
    const response = await fetch(task.downloadUrl, { headers: { Authorization: `Bearer ${state.token}` } });
    if (response.status === 401) throw new Rejected("token rejected");
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = el("a");
    link.href = url;
    link.download = task.fileName || "export";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    state.saved.set(task.id, `${link.download} (${blob.size} B)`);
    renderExports();
  } catch (error) {
    handleFailure(error);
  }
}

// ---------------------------------------------------------------- session

function onConnection(next) {
  const reconnected = next.state === "connected" && state.everConnected;
  if (next.state === "connected") state.everConnected = true;
  state.connection = next;
  renderState();
  if (next.state === "rejected") rejectToken();
  // The subscriptions resume by themselves; the rest of the page may have changed while we were away.
  if (reconnected) scheduleRefresh();
}

function subscribeLive(client) {
  client.subscribe(BREACHES, () => ({ afterId: state.breachCursor }), {
    next: (payload) => {
      const event = payload.data?.quotaThresholdBreached;
      if (!event) return;
      state.breachCursor = event.id;
      addEvents([event]);
      scheduleRefresh();
    },
    error: (errors) => showError(errors.map?.((e) => e.message).join("; ") ?? "subscription failed"),
    complete: () => {},
  });
  client.subscribe(ACTIVITY, () => ({}), { next: scheduleRefresh, error: () => {}, complete: () => {} });
}

async function open(token) {
  state.token = token;
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
  state.connection = { state: "connecting", attempt: 0, delayMs: 0 };
  renderState();
  let data;
  try {
    data = await gql(INITIAL_QUERY);
  } catch (error) {
    handleFailure(error);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  const history = data.history.edges.map((e) => e.node);
  // Subscribe from the newest stored event: everything at or before it is in `history` (or older than the page
  // shows), everything after it comes from the subscription, with no gap between the two.
  state.breachCursor = history.length ? history[0].id : START_OF_LOG;
  addEvents(history);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const client = new GraphQLWsClient(
    `${scheme}://${location.host}/graphql`,
    () => ({ authorization: `Bearer ${state.token}` }),
    onConnection,
  );
  state.client = client;
  subscribeLive(client);
  applyRefresh(data);
  client.start();
  state.pollTimer = setInterval(refresh, REFRESH_EVERY_MS);
}

function close() {
  if (state.client) state.client.stop();
  state.client = null;
  clearInterval(state.pollTimer);
  clearTimeout(state.refreshTimer);
  state.exportSubs.clear();
  state.feed.clear();
  state.exports.clear();
  state.saved.clear();
  state.summary = null;
  state.below = null;
  state.everConnected = false;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
}

function showLogin(message) {
  $("board").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").value = "";
  $("token").focus();
}

function rejectToken() {
  close();
  state.connection = { state: "rejected", attempt: 0, delayMs: 0 };
  renderState();
  showLogin(t(state.lang, "rejected"));
}

function init() {
  state.lang = initialLanguage(localStorage.getItem(LANG_KEY), navigator.languages || [navigator.language]);
  const select = $("lang");
  for (const [code, name] of Object.entries(LANGUAGES)) {
    const option = el("option", "", name);
    option.value = code;
    select.append(option);
  }
  select.value = state.lang;
  select.addEventListener("change", () => {
    state.lang = select.value;
    localStorage.setItem(LANG_KEY, state.lang);
    renderAll();
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) open(token);
  });
  $("logout").addEventListener("click", () => {
    close();
    state.connection = { state: "idle", attempt: 0, delayMs: 0 };
    renderState();
    showLogin("");
  });
  $("start-export").addEventListener("click", startExport);
  renderAll();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) open(token);
  else showLogin("");
}

init();
