// cola review console. Everything from the server is rendered with textContent (never innerHTML): ids, labels,
// notes and metadata are untrusted.
"use strict";

const state = { session: null, items: [], index: -1, current: null, busy: false };
const $ = (id) => document.getElementById(id);

function itemUrl(id, suffix) {
  return "/api/items/" + encodeURIComponent(id) + (suffix ? "/" + suffix : "");
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.error || ("HTTP " + response.status));
  }
  return body;
}

function text(element, value) {
  element.textContent = value === null || value === undefined ? "" : String(value);
}

function setStatus(message, isError) {
  text($("status"), message);
  $("status").className = isError ? "error" : "";
}

function renderProgress(counts) {
  text($("progress"), counts.done + " done / " + counts.pending + " left");
  $("progress-bar").max = Math.max(1, counts.total);
  $("progress-bar").value = counts.done;
}

function renderQueue() {
  const queue = $("queue");
  queue.replaceChildren();
  state.items.forEach((item, index) => {
    const li = document.createElement("li");
    text(li, item.id);
    li.title = item.id;
    li.dataset.index = String(index);
    if (item.status === "done") li.classList.add("done");
    if (index === state.index) li.classList.add("current");
    li.addEventListener("click", () => select(index));
    queue.appendChild(li);
  });
}

async function refresh() {
  const listing = await api("/api/items?status=all");
  state.items = listing.items;
  renderProgress(listing.counts);
  renderQueue();
  return listing;
}

function nextPending(from) {
  for (let step = 1; step <= state.items.length; step++) {
    const index = (from + step) % state.items.length;
    if (state.items[index].status === "pending") return index;
  }
  return -1;
}

async function select(index) {
  if (index < 0 || index >= state.items.length) {
    $("item").hidden = true;
    $("empty").hidden = false;
    state.index = -1;
    state.current = null;
    renderQueue();
    return;
  }
  state.index = index;
  const item = await api(itemUrl(state.items[index].id));
  state.current = item;
  $("empty").hidden = true;
  $("item").hidden = false;
  const image = $("image");
  image.classList.add("blurred");
  image.src = itemUrl(item.id, "image");
  text($("item-id"), item.id);
  text($("item-label"), item.label);
  text($("item-score"), item.score.toFixed(3));
  text($("item-action"), item.action);
  text($("item-adversarial"), item.adversarial_score.toFixed(3) + (item.suspected_adversarial ? " (suspected)" : ""));
  text($("item-reasons"), item.review_reasons.length ? item.review_reasons.join(", ") : "none recorded");
  const rows = $("topk").querySelector("tbody");
  rows.replaceChildren();
  item.topk.forEach((entry, i) => {
    const tr = document.createElement("tr");
    [String(i + 1), entry.label, entry.score.toFixed(3)].forEach((value) => {
      const td = document.createElement("td");
      text(td, value);
      tr.appendChild(td);
    });
    rows.appendChild(tr);
  });
  const metadata = $("metadata");
  metadata.replaceChildren();
  Object.entries(item.metadata || {}).forEach(([key, value]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    text(dt, key);
    text(dd, typeof value === "string" ? value : JSON.stringify(value));
    metadata.append(dt, dd);
  });
  $("relabel").value = item.label;
  $("note").value = "";
  const mine = item.decisions.filter((d) => d.reviewer === state.session.reviewer);
  text($("history"), mine.length
    ? "your decision: " + mine[mine.length - 1].decision + " (revision " + mine[mine.length - 1].revision + ")"
    : "");
  setStatus("", false);
  renderQueue();
}

async function decide(decision) {
  if (!state.current || state.busy) return;
  const body = { decision: decision, note: $("note").value };
  if (decision === "relabel") body.label = $("relabel").value;
  state.busy = true;
  try {
    const answer = await api(itemUrl(state.current.id, "decision"), {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.session.csrf },
      body: JSON.stringify(body),
    });
    const d = answer.decision;
    setStatus((answer.created ? "recorded: " : "already recorded: ") + d.decision +
      (d.final_label ? " → " + d.final_label : "") + " (revision " + d.revision + ")", false);
    const decidedIndex = state.index;
    await refresh();
    await select(nextPending(decidedIndex));
    document.body.dataset.decisions = String((Number(document.body.dataset.decisions) || 0) + 1);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    state.busy = false;
  }
}

function toggleImage() {
  $("image").classList.toggle("blurred");
}

function onKey(event) {
  const typing = event.target instanceof HTMLTextAreaElement ||
    (event.target instanceof HTMLInputElement && event.target.type === "text");
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "j") select(Math.min(state.items.length - 1, state.index + 1));
  else if (key === "k") select(Math.max(0, state.index - 1));
  else if (key === "v") toggleImage();
  else if (key === "c") decide("confirm");
  else if (key === "x") decide("adversarial");
  else if (key === "a") decide("allow");
  else if (key === "r") decide("relabel");
  else if (key === "n") { $("note").focus(); event.preventDefault(); }
  else if (/^[1-9]$/.test(key)) {
    const options = $("relabel").options;
    const n = Number(key) - 1;
    if (n < options.length) $("relabel").selectedIndex = n;
  } else return;
  event.preventDefault();
}

async function start() {
  try {
    state.session = await api("/api/session");
  } catch (error) {
    setStatus("not signed in: open the link cola review printed (" + error.message + ")", true);
    return;
  }
  text($("reviewer"), "reviewer: " + state.session.reviewer);
  const relabel = $("relabel");
  state.session.labels.forEach((label, i) => {
    const option = document.createElement("option");
    option.value = label;
    text(option, (i < 9 ? (i + 1) + " " : "") + label);
    relabel.appendChild(option);
  });
  $("reveal").addEventListener("click", toggleImage);
  document.querySelectorAll("#decide button").forEach((button) => {
    button.addEventListener("click", () => decide(button.dataset.decision));
  });
  document.addEventListener("keydown", onKey);
  await refresh();
  await select(nextPending(-1));
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", start);
