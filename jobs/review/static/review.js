// The review queue page (jobs/review/app.py serves it). Every string from the data is put
// into the page with textContent, never parsed as HTML; the server has already escaped
// control, bidi and zero-width characters (jobs.report.summary.printable).
"use strict";

const KEYS = { g: "generated", r: "real", u: "unsure" };
const LABELS = { generated: "generated", real: "real (false positive)", unsure: "unsure" };
const state = { offset: 0, pageSize: 50, total: 0, rows: [], current: 0, undo: [] };

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, options) {
  const answer = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (!answer.ok) throw new Error(answer.status + " " + (await answer.text()));
  return answer.json();
}

function filterQuery() {
  const q = new URLSearchParams();
  if ($("scan").value) q.set("scan_id", $("scan").value);
  if ($("date").value) q.set("scan_date", $("date").value);
  if ($("prefix").value) q.set("prefix", $("prefix").value);
  if ($("undecided").checked) q.set("undecided", "1");
  return q;
}

async function load(keepCurrent) {
  const q = filterQuery();
  q.set("offset", state.offset);
  q.set("limit", state.pageSize);
  try {
    const page = await api("/api/queue?" + q.toString());
    state.total = page.total;
    state.rows = page.rows;
    if (!keepCurrent) state.current = 0;
    state.current = Math.min(state.current, Math.max(0, state.rows.length - 1));
    render();
    say(state.total + " flagged images match");
  } catch (e) {
    say("could not load the queue: " + e.message, true);
  }
}

function decisionCell(row) {
  const td = el("td", null, "decision");
  if (row.decision) {
    td.appendChild(el("div", LABELS[row.decision] || row.decision, "decision-" + row.decision));
    td.appendChild(el("div", "by " + row.reviewer + " at " + row.decided_at, "meta"));
  } else {
    td.appendChild(el("div", "undecided", "meta"));
  }
  return td;
}

function renderRow(row, index) {
  const tr = el("tr", null, "row" + (index === state.current ? " current" : ""));
  tr.dataset.id = row.id;
  const thumb = el("td");
  const img = el("img", null, "thumb");
  img.alt = "heat map";
  img.loading = "lazy";
  img.src = "/api/thumbnail/" + row.id;
  img.addEventListener("error", () => { img.remove(); thumb.textContent = "no thumbnail"; });
  thumb.appendChild(img);
  tr.appendChild(thumb);
  tr.appendChild(el("td", row.score.toFixed(3), "score"));
  const where = el("td", null);
  where.appendChild(el("div", row.uri, "uri"));
  where.appendChild(el("div", "scan " + row.scan_id + " (" + row.scan_date + "), model " + row.model_version, "meta"));
  tr.appendChild(where);
  tr.appendChild(decisionCell(row));
  const buttons = el("td");
  for (const [key, decision] of Object.entries(KEYS)) {
    const b = el("button", LABELS[decision] + " (" + key + ")", "decide");
    b.type = "button";
    b.dataset.decision = decision;
    b.addEventListener("click", () => { state.current = index; decide(decision); });
    buttons.appendChild(b);
  }
  tr.appendChild(buttons);
  tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "BUTTON") { state.current = index; mark(); } });
  return tr;
}

function render() {
  const body = $("rows");
  body.replaceChildren(...state.rows.map(renderRow));
  const last = Math.min(state.offset + state.rows.length, state.total);
  $("range").textContent = state.total ? (state.offset + 1) + "-" + last + " of " + state.total : "none";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = state.offset + state.pageSize >= state.total;
}

function mark() {
  const trs = $("rows").children;
  for (let i = 0; i < trs.length; i++) trs[i].classList.toggle("current", i === state.current);
  if (trs[state.current]) trs[state.current].scrollIntoView({ block: "nearest" });
}

async function post(items) {
  const reviewer = $("reviewer").value.trim();
  if (!reviewer) { say("enter your name as reviewer first", true); $("reviewer").focus(); return null; }
  localStorage.setItem("genscan-reviewer", reviewer);
  const answer = await api("/api/decisions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ reviewer: reviewer, items: items }),
  });
  for (const updated of answer.rows) {
    const i = state.rows.findIndex((r) => r.id === updated.id);
    if (i >= 0) state.rows[i] = updated;
  }
  return answer;
}

async function decide(decision) {
  const row = state.rows[state.current];
  if (!row) return;
  const before = row.decision || "cleared";
  try {
    if (!(await post([{ id: row.id, decision: decision }]))) return;
    state.undo.push({ id: row.id, decision: before });
    say("recorded " + decision + " for row " + (state.offset + state.current + 1));
    state.current = Math.min(state.current + 1, state.rows.length - 1);
    render();
    mark();
  } catch (e) {
    say("not recorded: " + e.message, true);
  }
}

async function undo() {
  const last = state.undo.pop();
  if (!last) { say("nothing to undo"); return; }
  try {
    if (!(await post([{ id: last.id, decision: last.decision }]))) { state.undo.push(last); return; }
    const i = state.rows.findIndex((r) => r.id === last.id);
    if (i >= 0) state.current = i;
    say("undone: row is " + last.decision + " again");
    render();
    mark();
  } catch (e) {
    state.undo.push(last);
    say("undo failed: " + e.message, true);
  }
}

function move(step) {
  state.current = Math.max(0, Math.min(state.rows.length - 1, state.current + step));
  mark();
}

function turn(pages) {
  const offset = state.offset + pages * state.pageSize;
  if (offset < 0 || offset >= state.total) return;
  state.offset = offset;
  load(false);
}

function onKey(ev) {
  const tag = ev.target.tagName;
  if (ev.ctrlKey || ev.metaKey || ev.altKey || tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
  const actions = { j: () => move(1), k: () => move(-1), z: undo, n: () => turn(1), p: () => turn(-1) };
  if (KEYS[ev.key]) decide(KEYS[ev.key]);
  else if (actions[ev.key]) actions[ev.key]();
  else return;
  ev.preventDefault();
}

function refilter() { state.offset = 0; load(false); }

async function start() {
  try {
    const meta = await api("/api/meta");
    state.pageSize = meta.page_size;
    $("reviewer").value = localStorage.getItem("genscan-reviewer") || meta.reviewer;
    const dates = new Set();
    for (const s of meta.scans) {
      const o = el("option", s.label + " (" + s.scan_date + ", " + s.flagged + " flagged)");
      o.value = s.scan_id;
      $("scan").appendChild(o);
      dates.add(s.scan_date);
    }
    for (const d of [...dates].sort().reverse()) {
      const o = el("option", d);
      o.value = d;
      $("date").appendChild(o);
    }
  } catch (e) {
    say("could not load: " + e.message, true);
    return;
  }
  for (const id of ["scan", "date", "undecided"]) $(id).addEventListener("change", refilter);
  $("prefix").addEventListener("change", refilter);
  $("undo").addEventListener("click", undo);
  $("prev").addEventListener("click", () => turn(-1));
  $("next").addEventListener("click", () => turn(1));
  document.addEventListener("keydown", onKey);
  await load(false);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
