// The gpunet dashboard. It reads the node through GET /v1/events (a JSON
// snapshot a second and on change) and acts through the local API's own
// routes, from the API's origin: POST /v1/tasks, POST /v1/host/pause|resume.
// Everything a peer sent (models, IDs, prompts) is put in the page as text,
// never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

// el builds an element: attrs are properties, children strings or nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, attrs || {});
  for (const c of children) {
    if (c !== null && c !== undefined) e.append(c);
  }
  return e;
}

const short = (id) => (id && id.length > 16 ? id.slice(0, 6) + "…" + id.slice(-6) : id || "");
const blockURL = (cid) => "/v1/blocks/" + encodeURIComponent(cid);

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function secs(ms) {
  if (ms === undefined || ms === null) return "";
  return ms < 1000 ? ms.toFixed(0) + " ms" : (ms / 1000).toFixed(1) + " s";
}

// meter draws value against max, amber from 85% and red from 95%.
function meter(value, max) {
  const f = max > 0 ? Math.min(value / max, 1) : 0;
  const m = el("span", { className: "meter" + (f >= 0.95 ? " bad" : f >= 0.85 ? " warn" : "") });
  const bar = el("span");
  bar.style.width = (f * 100).toFixed(0) + "%"; // CSSOM, which the page's CSP allows
  m.append(bar);
  return m;
}

// --- the live state ---

let snap = null;

function connect() {
  const es = new EventSource("/v1/events");
  es.onopen = () => setConn("live", "");
  es.onerror = () => setConn("reconnecting…", "off"); // EventSource retries by itself
  es.onmessage = (ev) => {
    snap = JSON.parse(ev.data);
    render(snap);
  };
}

function setConn(text, cls) {
  const c = $("conn");
  c.textContent = text;
  c.className = "badge " + cls;
}

function render(s) {
  $("node-id").textContent = s.node.peer_id;
  renderTotals(s);
  renderSwarm(s.swarm);
  renderNode(s.node);
  renderFlights(s.inflight);
  renderRecent(s.recent);
}

function renderTotals(s) {
  const t = s.totals;
  const card = (label, value) => el("div", { className: "card" }, el("b", {}, String(value)), label);
  const cards = [
    card("hosts in view", t.hosts),
    card("free slots", t.free_slots + " / " + t.slots),
    card("tasks/s submitted here", t.done_per_s.toFixed(2)),
    card("tasks/s in the swarm (est.)", t.swarm_per_s.toFixed(2)),
  ];
  if (s.node.host) cards.push(card("tasks/s served here", t.served_per_s.toFixed(2)));
  cards.push(card("cache hit ratio", t.cache_hit_ratio === undefined ? "—" : (t.cache_hit_ratio * 100).toFixed(0) + " %"));
  cards.push(card("peers connected", s.node.peers));
  $("totals").replaceChildren(...cards);
}

function renderSwarm(rows) {
  const body = $("swarm").tBodies[0];
  body.replaceChildren(...rows.map((h) => {
    const temp = h.limit_c > 0
      ? el("td", {}, meter(h.temp_c, h.limit_c), h.temp_c.toFixed(0) + " / " + h.limit_c.toFixed(0) + " °C" + (h.throttled ? " throttled" : ""))
      : el("td", { className: "muted" }, "no telemetry");
    const tr = el("tr", { className: h.self ? "self" : "" },
      el("td", { className: "mono", title: h.id }, short(h.id)),
      h.gpu ? el("td", {}, h.gpu) : el("td", { className: "muted" }, "not said"),
      temp,
      el("td", {}, meter(h.busy, h.slots), h.busy + " / " + h.slots),
      el("td", {}, h.queue + (h.queue_max ? " / " + h.queue_max : "")),
      el("td", { className: "mono" }, (h.models || []).join(", ")),
      el("td", {}, el("span", { className: "badge " + (h.accepting ? "" : "warn") }, h.accepting ? "yes" : "no")),
      h.reach ? el("td", { title: h.reach === "private" ? "behind a NAT: reached through a relay" : "dialable from the Internet" }, h.reach === "private" ? "private (relay)" : "public")
        : el("td", { className: "muted" }, "unknown"),
      el("td", {}, h.self ? "—" : h.beacon_age_s.toFixed(1) + " s ago"));
    tr.dataset.peer = h.id;
    return tr;
  }));
  $("swarm-empty").hidden = rows.length > 0;
}

function renderNode(n) {
  const facts = [["peer id", el("span", { className: "mono" }, n.peer_id)],
    ["role", n.host ? "host (kernel " + n.kernel + ")" : "daemon (no GPU lent)"],
    ["uptime", secs(n.uptime_s * 1000)]];
  if (n.gpu) {
    facts.push(["GPU", n.gpu.name + (n.gpu.simulated && !/simulated/i.test(n.gpu.name) ? " (simulated)" : "")]);
    facts.push(["temperature", el("span", {}, meter(n.gpu.temp_c, n.max_temp_c || n.gpu.temp_limit_c),
      n.gpu.temp_c.toFixed(1) + " °C, limit " + (n.max_temp_c || n.gpu.temp_limit_c).toFixed(0) + " °C")]);
    facts.push(["power", n.gpu.power_w.toFixed(0) + " W, " + n.gpu.util_pct.toFixed(0) + " % busy"]);
  }
  if (n.host) {
    const state = n.paused ? ["paused", "warn"] : n.off_hours ? ["outside lending hours", "warn"]
      : n.hot ? ["cooling down", "bad"] : ["taking work", ""];
    facts.push(["state", el("span", { id: "host-state", className: "badge " + state[1] }, state[0])]);
    if (n.lend_hours) facts.push(["lending hours", n.lend_hours + " local time"]);
    // Zero counts are left out of the status JSON.
    facts.push(["running / queued", (n.running || 0) + " / " + (n.queued || 0) + (n.waiting ? ", " + n.waiting + " requests waiting" : "")]);
    facts.push(["served", n.served + " (" + n.served_from_cache + " from cache), refused " + n.refused]);
  }
  const c = n.cache;
  facts.push(["cache", el("span", {}, meter(c.bytes, c.budget_bytes), bytes(c.bytes) + " of " + bytes(c.budget_bytes) +
    ", " + c.entries + " results, " + c.hits + " hits / " + c.misses + " misses")]);
  $("node-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("owner").hidden = !n.host;
  $("pause").disabled = n.paused;
  $("resume").disabled = !n.paused;
  // The limit now shows as the placeholder: the value is the owner's to
  // type, and a render each second must not overwrite it.
  $("max-temp").placeholder = n.max_temp_c ? n.max_temp_c.toFixed(0) : "none";
}

// describe says where a submission is, in words.
function describe(p) {
  switch (p.stage) {
    case "waiting": return "every host is full: waiting here, " + ordinal(p.position) + " in line" + eta(p.eta_ms);
    case "queued": return "queued at " + short(p.peer) + ", position " + p.position + eta(p.eta_ms);
    case "running": return "running on " + short(p.peer) + (p.total ? ", step " + (p.step || 0) + " of " + p.total : "") + eta(p.eta_ms);
    case "preview": return "partial image at step " + (p.step || 0) + " of " + p.total;
    case "trying": return "offering it to " + short(p.peer);
    case "lookup": return "looking for a stored copy";
    case "searching": return "looking for hosts";
    case "refused": return short(p.peer) + " refused: " + (p.message || p.code || "") + "; trying another";
    case "done": return "verified and stored";
    default: return p.stage + (p.peer ? " " + short(p.peer) : "");
  }
}
const eta = (ms) => (ms ? ", about " + secs(ms) + " left" : "");
const ordinal = (n) => (n ? "#" + n : "");

function renderFlights(fs) {
  $("inflight").replaceChildren(...fs.map((f) => el("li", {},
    el("div", {}, el("b", {}, f.prompt), " ", el("span", { className: "muted" }, secs(f.elapsed_ms))),
    el("div", { className: "muted" }, describe(f)),
    el("progress", { max: f.total || 1, value: f.step || 0 }))));
  $("inflight-empty").hidden = fs.length > 0;
}

// Thumbnails are rebuilt only when the list changes, so images do not
// flicker once a second.
let recentKey = "";
function renderRecent(rs) {
  const key = rs.map((r) => r.task_cid + r.at).join();
  if (key === recentKey) return;
  recentKey = key;
  $("recent").replaceChildren(...rs.map((r) => {
    if (r.error) {
      return el("div", { className: "thumb failed", title: r.error }, el("p", {}, r.prompt), el("p", {}, r.error));
    }
    const img = r.outputs && r.outputs.find((o) => o.media_type.startsWith("image/"));
    const t = el("div", { className: "thumb", title: r.prompt },
      img ? el("img", { src: blockURL(img.cid), alt: r.prompt, loading: "lazy" }) : null,
      el("p", {}, r.prompt),
      el("p", { className: "muted" }, r.cache + ", " + secs(r.elapsed_ms)));
    t.dataset.task = r.task_cid;
    t.onclick = () => view(r);
    return t;
  }));
  $("recent-empty").hidden = rs.length > 0;
}

function view(r) {
  const img = r.outputs.find((o) => o.media_type.startsWith("image/"));
  $("viewer-img").src = img ? blockURL(img.cid) : "";
  const rows = [["TaskCID", r.task_cid], ["ResultCID", r.result_cid], ["host", r.host]];
  for (const o of r.outputs) rows.push([o.media_type, o.cid]);
  $("viewer-cids").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("viewer").showModal();
}

// --- actions, through the API's own routes ---

async function post(path, body) {
  return fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: body ? JSON.stringify(body) : "{}" });
}

async function setPaused(paused) {
  $("owner-msg").textContent = "";
  const r = await post(paused ? "/v1/host/pause" : "/v1/host/resume");
  if (!r.ok) $("owner-msg").textContent = (await r.json()).message;
  // The stream shows the new state within a second.
}

// setLimit sends the typed temperature limit; 0 asks for the GPU's own
// rule (5 °C under its slowdown temperature).
async function setLimit(ev) {
  ev.preventDefault();
  const v = $("max-temp").value.trim();
  if (v === "") {
    $("owner-msg").textContent = "type a limit in °C first (0: the GPU's own)";
    return;
  }
  $("owner-msg").textContent = "";
  const r = await post("/v1/host/limits", { max_temp_c: Number(v) });
  if (!r.ok) {
    $("owner-msg").textContent = (await r.json()).message;
    return;
  }
  const st = await r.json();
  $("max-temp").value = "";
  $("owner-msg").textContent = st.max_temp_c ? "limit set to " + st.max_temp_c.toFixed(0) + " °C" : "no limit: the GPU reports none";
}

// submit sends the prompt and follows the NDJSON stream of POST /v1/tasks:
// progress lines, then one result or error line.
async function submit(ev) {
  ev.preventDefault();
  const size = Number($("size").value);
  // previews: the host's partial images of the run (the kernel's real
  // state so far), shown until the result replaces them.
  const task = { prompt: $("prompt").value.trim(), width: size, height: size,
    steps: Number($("steps").value), seed: Number($("seed").value), previews: 3 };
  $("go").disabled = true;
  $("submission").hidden = false;
  $("sub-figure").hidden = true;
  $("sub-log").replaceChildren();
  $("sub-bar").value = 0;
  const stage = (text) => { $("sub-stage").textContent = text; };
  stage("sending…");
  try {
    const r = await fetch("/v1/tasks", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(task) });
    if (!r.ok) throw new Error((await r.json()).message);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) handleLine(JSON.parse(line), stage);
      }
    }
  } catch (e) {
    stage("failed: " + e.message);
  } finally {
    $("go").disabled = false;
  }
}

function handleLine(l, stage) {
  if (l.progress) {
    const p = l.progress;
    stage(describe(p));
    const li = el("li", {}, describe(p));
    li.dataset.stage = p.stage;
    $("sub-log").append(li);
    $("sub-log").scrollTop = $("sub-log").scrollHeight;
    if (p.total) { $("sub-bar").max = p.total; $("sub-bar").value = p.step || 0; }
    if (p.stage === "preview" && p.preview) {
      $("sub-img").src = "data:image/png;base64," + p.preview;
      $("sub-img").dataset.preview = String(p.step || 0);
      $("sub-cids").textContent = "partial image, step " + (p.step || 0) + " of " + p.total;
      $("sub-figure").hidden = false;
    }
  } else if (l.result) {
    const res = l.result;
    $("sub-bar").value = $("sub-bar").max;
    stage("done in " + secs(res.elapsed_ms) + " (" + res.cache + ") on " + short(res.host));
    const out = res.outputs.find((o) => o.media_type.startsWith("image/"));
    if (out) {
      $("sub-img").src = blockURL(out.cid);
      $("sub-img").dataset.cid = out.cid;
      delete $("sub-img").dataset.preview;
      $("sub-cids").textContent = "TaskCID " + res.task_cid + "\nResultCID " + res.result_cid + "\n" + out.media_type + " " + out.cid;
      $("sub-figure").hidden = false;
    }
  } else if (l.error) {
    stage("failed: " + l.error.message + (l.error.code ? " (" + l.error.code + ")" : ""));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("prompt-form").addEventListener("submit", submit);
  $("pause").addEventListener("click", () => setPaused(true));
  $("resume").addEventListener("click", () => setPaused(false));
  $("limit-form").addEventListener("submit", setLimit);
  connect();
});
