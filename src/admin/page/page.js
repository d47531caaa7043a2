// The live conversation page: draws /api/flow and refreshes it; shows a
// searched contact from /contacts/{id}. Text goes in as text, never as HTML.
"use strict";

const REFRESH_MS = 5000;
const KINDS = ["entered", "sent", "suppressed", "exited"];
let loads = 0;
let shownContact = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// The counts a node shows: which activity kinds, as rows of day and week.
function counts(node, kinds) {
  const grid = el("div", { class: "counts" }, el("span", { class: "h" }, ""),
    el("span", { class: "h" }, "day"), el("span", { class: "h" }, "week"));
  for (const k of kinds) {
    grid.append(el("span", { class: "h" }, k),
      el("span", { "data-count": "day." + k }, node.day[k]),
      el("span", { "data-count": "week." + k }, node.week[k]));
  }
  return grid;
}

function trigger(thread) {
  const t = thread.trigger;
  const what = t.no_events_required ? "No Events Required" : t.events.join(", ");
  return el("div", { class: "node trigger", "data-step": "trigger" },
    el("div", { class: "kind" }, "trigger"),
    el("div", { class: "label" }, what),
    counts(t, ["entered"]));
}

function step(s) {
  const kinds = s.kind === "message" ? ["sent", "suppressed", "exited"] : ["exited"];
  return el("div", { class: "node " + s.kind, "data-step": s.id, "data-target": s.target },
    el("div", { class: "kind" }, s.kind + " · " + s.id),
    el("div", { class: "label" }, s.label),
    s.detail ? el("div", { class: "detail" }, s.detail) : null,
    el("span", { class: "now" }, "now ", el("b", { "data-count": "now" }, s.now)),
    counts(s, kinds));
}

function conversation(c) {
  const meta = [c.campaign ? "campaign " + c.campaign : null,
    c.list ? "list " + c.list : "no list", "entries: " + c.entry,
    c.exit_events.length ? "exits on " + c.exit_events.join(", ") : null].filter(Boolean).join(" · ");
  const lanes = el("div", { class: "lanes" }, c.threads.map((t) =>
    el("div", { class: "thread", "data-thread": t.name },
      el("h3", {}, t.name, " ", el("small", {}, "rank " + t.rank +
        (t.exit_events.length ? " · exits on " + t.exit_events.join(", ") : ""))),
      trigger(t), t.steps.map(step))));
  return el("section", { class: "conversation", "data-conversation": c.name },
    el("h2", {}, c.name), el("div", { class: "meta" }, meta), lanes);
}

// GoTo jumps, drawn over the lanes once they are laid out.
function drawJumps(section) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "jumps");
  const defs = document.createElementNS(ns, "defs");
  const marker = document.createElementNS(ns, "marker");
  for (const [k, v] of Object.entries({ id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" })) marker.setAttribute(k, v);
  const tip = document.createElementNS(ns, "path");
  tip.setAttribute("d", "M0,0 L10,5 L0,10 z");
  tip.setAttribute("class", "tip");
  marker.append(tip);
  defs.append(marker);
  svg.append(defs);
  const box = section.getBoundingClientRect();
  for (const from of section.querySelectorAll(".node.goto[data-target]")) {
    const to = section.querySelector('.node[data-step="' + CSS.escape(from.dataset.target) + '"]');
    if (!to) continue;
    const a = from.getBoundingClientRect();
    const b = to.getBoundingClientRect();
    // Out of the GoTo's side that faces the target, into the target's near side.
    const right = b.left > a.left;
    const x1 = (right ? a.right : a.left) - box.left, y1 = a.top + a.height / 2 - box.top;
    const x2 = (right ? b.left : b.right) - box.left, y2 = b.top + 14 - box.top;
    const mid = (x1 + x2) / 2;
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`);
    path.setAttribute("marker-end", "url(#arrow)");
    svg.append(path);
  }
  section.append(svg);
}

function markContact() {
  for (const n of document.querySelectorAll(".node.here")) n.classList.remove("here");
  if (!shownContact) return;
  for (const c of shownContact.conversations || []) {
    for (const e of c.active) {
      const sel = '.conversation[data-conversation="' + CSS.escape(c.conversation) +
        '"] .node[data-step="' + CSS.escape(e.step || "") + '"]';
      const n = document.querySelector(sel);
      if (n) n.classList.add("here");
    }
  }
}

async function load() {
  const status = document.getElementById("status");
  try {
    const r = await fetch("/api/flow", { cache: "no-store" });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    const flows = document.getElementById("flows");
    flows.replaceChildren(...data.conversations.map(conversation));
    for (const s of flows.querySelectorAll(".conversation")) drawJumps(s);
    markContact();
    const clocks = data.partitions.map((p) => "p" + p.partition + " " + (p.clock || "no clock"));
    status.textContent = data.partitions.length + " partition(s) held · clocks: " +
      (clocks.join(", ") || "none") + " · updated " + new Date().toLocaleTimeString();
    status.className = "";
    loads += 1;
    document.body.dataset.loads = String(loads);
  } catch (e) {
    status.textContent = "cannot load the conversations: " + e.message;
    status.className = "error";
  }
}

function table(headers, rows) {
  return el("table", {}, el("tr", {}, headers.map((h) => el("th", {}, h))),
    rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))));
}

function transitionRow(t) {
  const skip = new Set(["transition_id", "type", "conversation", "contact_id", "at", "entry", "thread", "step"]);
  const rest = Object.entries(t).filter(([k]) => !skip.has(k))
    .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(" ");
  return [t.at, t.conversation, t.entry, t.thread, t.step, t.type, rest];
}

function showContact(id, v) {
  const view = document.getElementById("contact-view");
  const parts = [el("h2", {}, "Contact ", el("span", { "data-contact": "id" }, id),
    " · partition " + v.partition + " · clock " + (v.partition_clock || "none"))];
  parts.push(el("div", {}, "Orders: " + v.orders.count + ", total " + v.orders.total +
    ", last " + (v.orders.last_order_at || "never")));
  parts.push(table(["list", "subscribed", "since"],
    v.subscriptions.map((s) => [s.list, s.subscribed ? "yes" : "no", s.at])));
  // An attribute comes with the event time it was set at.
  const fields = Object.entries(v.fields).map(([k, f]) =>
    [k, f !== null && typeof f === "object" ? f.value + " (set " + f.set_at + ")" : f]);
  if (fields.length) parts.push(table(["field", "value"], fields));
  parts.push(table(["conversation", "mailable", "entries", "thread", "step", "waiting until"],
    v.conversations.flatMap((c) => {
      const mail = c.mailable ? c.mailable.list + ": " + c.mailable.status : "no list";
      if (!c.active.length) return [[c.conversation, mail, c.entries_started, "-", "-", "-"]];
      return c.active.map((e) => [c.conversation, mail, c.entries_started, e.thread,
        el("span", { "data-contact-step": c.conversation }, e.step), e.waiting_until || "-"]);
    })));
  parts.push(el("h2", {}, "Recent transitions, newest first"));
  parts.push(table(["at", "conversation", "entry", "thread", "step", "type", "details"],
    v.recent_transitions.slice().reverse().map(transitionRow)));
  view.replaceChildren(...parts);
  view.hidden = false;
}

async function search(id) {
  const view = document.getElementById("contact-view");
  view.hidden = false;
  view.replaceChildren(el("p", {}, "looking up " + id + "…"));
  try {
    const r = await fetch("/contacts/" + encodeURIComponent(id), { cache: "no-store" });
    const v = await r.json();
    if (!r.ok) {
      shownContact = null;
      view.replaceChildren(el("p", { class: "error", "data-contact": "missing" }, id + ": " + (v.error || r.statusText)));
    } else {
      shownContact = v;
      showContact(id, v);
    }
  } catch (e) {
    shownContact = null;
    view.replaceChildren(el("p", { class: "error" }, id + ": " + e.message));
  }
  markContact();
  view.dataset.shown = id;
}

document.getElementById("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = document.getElementById("contact").value.trim();
  if (!id) return;
  history.replaceState(null, "", "#contact=" + encodeURIComponent(id));
  search(id);
});

load();
setInterval(load, REFRESH_MS);
const linked = new URLSearchParams(location.hash.slice(1)).get("contact");
if (linked) {
  document.getElementById("contact").value = linked;
  search(linked);
}
