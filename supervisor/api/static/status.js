// genvisor status page: live over the event WebSocket, no polling, no framework.
// Invariant: data from the server is written with textContent (or attributes), never as HTML.
"use strict";

(() => {
  const body = document.body;
  const base = body.dataset.base || "";
  const TOKEN_KEY = "genvisor.token";
  const KEEP_EVENTS = 600;
  const MEMORY_WINDOW_S = 300;
  let token = sessionStorage.getItem(TOKEN_KEY);
  let lastSeq = null;
  let snapshotSeq = 0; // the bus's last seq when /v1/status was read
  let socket = null;
  let retryDelay = 1000;
  let refreshTimer = null;
  const events = [];
  const memory = new Map(); // device -> [{ts, used, total}]
  const retries = new Map(); // job id -> last job.retrying data
  const progress = new Map(); // job id -> last job.progress data
  const videos = new Map(); // job id -> <video>
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function clock(ts) {
    return ts ? new Date(ts * 1000).toLocaleTimeString([], { hour12: false }) : "";
  }

  function ago(ts) {
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  }

  function authHeaders() {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  async function api(path) {
    const response = await fetch(base + path, { headers: authHeaders(), cache: "no-store" });
    if (response.status === 401) {
      askToken("The token was refused; enter it again.");
      throw new Error("token refused");
    }
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response;
  }

  // -- token ----------------------------------------------------------------------------------

  function askToken(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (socket) {
      socket.onclose = null; // no reconnect without a token
      socket.close();
      socket = null;
    }
    $("main").hidden = true;
    $("token-form").hidden = false;
    $("conn").textContent = "this server needs its API token";
    $("conn").className = "conn";
    $("token-error").textContent = message || "";
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    $("token-input").value = "";
    if (!value) return;
    token = value;
    sessionStorage.setItem(TOKEN_KEY, value);
    start();
  });

  function base64url(text) {
    const bytes = new TextEncoder().encode(text);
    let binary = "";
    bytes.forEach((b) => { binary += String.fromCharCode(b); });
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // -- rendering from /v1/status -----------------------------------------------------------------

  function setState(state, since) {
    const badge = $("state");
    badge.textContent = state.toUpperCase();
    badge.className = `state state-${state}`;
    $("since").textContent = since ? `since ${clock(since)} (${ago(since)})` : "";
    document.querySelectorAll("#state-graph .node").forEach((node) => {
      node.classList.toggle("current", node.dataset.state === state);
    });
  }

  function markEdge(from, to) {
    document.querySelectorAll("#state-graph .edge.taken").forEach((e) => e.classList.remove("taken"));
    const edge = document.querySelector(`#state-graph .edge[data-from="${from}"][data-to="${to}"]`);
    if (edge) edge.classList.add("taken");
  }

  function walkItem(t) {
    const li = el("li", `${clock(t.ts)} ${t.from} → ${t.to} (${t.trigger}) ${t.code || ""} ${t.reason || ""}`);
    li.dataset.to = t.to;
    return li;
  }

  function fillRows(tbody, rows) {
    tbody.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      cells.forEach((c) => tr.appendChild(el("td", c)));
      return tr;
    }));
  }

  function renderStatus(data) {
    const dump = data.state;
    snapshotSeq = (dump.bus && dump.bus.last_seq) || 0;
    setState(dump.state, dump.since);
    $("degraded").replaceChildren(
      ...Object.entries(dump.degraded_reasons || {}).map(([k, v]) => el("li", `${k}: ${v}`)));
    const reasons = (dump.readiness && dump.readiness.reasons) || [];
    $("readiness").textContent = reasons.length ? `not ready: ${reasons.join("; ")}` : "";
    $("walk").replaceChildren(...(dump.history || []).slice(-12).map((h) => walkItem({
      ts: h.ts, from: h.from_state, to: h.to_state, trigger: h.trigger, code: h.error_code,
      reason: h.reason,
    })));
    $("walk").scrollTop = $("walk").scrollHeight;
    const children = dump.children || [];
    fillRows($("children").tBodies[0], children.map((c) => [
      c.id, c.state, c.status || "", `${c.restarts_in_window}/${c.max_restarts}`, c.pid || "",
      c.last_error ? `${c.last_error.type}: ${c.last_error.message}` : "",
    ]));
    renderFailure(data.last_failure);
    const queue = dump.queue || {};
    $("queue").textContent = `waiting: ${queue.waiting || 0}` +
      (queue.running ? ` · running: ${queue.running}` : "");
    renderJobs(data.jobs || []);
    const monitor = children.find((c) => c.id === "vram_monitor") || {};
    renderPressure(monitor.pressure || {});
    fillRows($("learned").tBodies[0], (dump.learned_strategies || []).map((s) => [
      s.model, s.device, `${s.memory_mib} MiB`, s.size_bucket, s.rung, s.successes,
    ]));
    (data.memory || []).forEach((s) => addSample(s.device, s.ts, s.used, s.total));
    drawMemory();
  }

  function renderFailure(f) {
    const box = $("failure");
    if (!f) {
      box.replaceChildren(el("p", "No failure since the start.", "none"));
      return;
    }
    const title = el("p", `${f.title} `, "title");
    title.appendChild(el("code", f.code));
    title.appendChild(el("time", ` ${clock(f.ts)}`));
    const list = el("ul", null, "suggestions");
    (f.suggestions || []).forEach((s) => list.appendChild(el("li", s)));
    box.replaceChildren(title, el("p", f.message, "message"), list);
  }

  function renderPressure(levels) {
    const box = $("pressure");
    box.replaceChildren(...Object.entries(levels).map(([device, level]) =>
      el("span", `pressure on ${device}: ${level} `, `pressure-${level}`)));
  }

  // -- jobs -----------------------------------------------------------------------------------

  function jobRow(id) {
    let row = document.querySelector(`#jobs tr[data-job="${CSS.escape(id)}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.job = id;
      ["id", "status", "prompt", "progress", "attempts", "changes", "video"].forEach((c) =>
        row.appendChild(el("td", "", c)));
      row.cells[0].textContent = id;
      $("jobs").tBodies[0].prepend(row);
    }
    return row;
  }

  function cell(row, name) {
    return row.querySelector(`td.${name}`);
  }

  function renderJobs(jobs) {
    const keep = new Set(jobs.map((j) => j.id));
    document.querySelectorAll("#jobs tbody tr").forEach((tr) => {
      if (keep.has(tr.dataset.job)) return;
      const video = videos.get(tr.dataset.job);
      if (video && video.src.startsWith("blob:")) URL.revokeObjectURL(video.src);
      videos.delete(tr.dataset.job);
      progress.delete(tr.dataset.job);
      retries.delete(tr.dataset.job);
      tr.remove();
    });
    jobs.slice().reverse().forEach((job) => {
      const row = jobRow(job.id);
      row.dataset.status = job.status;
      cell(row, "status").textContent = job.status;
      cell(row, "prompt").textContent = job.params.prompt;
      cell(row, "attempts").textContent = job.attempts;
      const words = (job.changes || []).map((c) => c.text);
      const retry = retries.get(job.id);
      if (retry && !words.length) words.push(`retried (attempt ${retry.attempt}): ${retry.reason}`);
      cell(row, "changes").textContent = words.join("; ");
      if (job.status === "running" && job.progress && job.progress.stage) {
        showProgress(row, progress.get(job.id) || job.progress);
      } else if (job.status !== "running") {
        cell(row, "progress").textContent = job.status === "succeeded" ? "done" : "";
      }
      if (job.status === "succeeded" && !videos.has(job.id)) attachVideo(row, job.id);
    });
    $("jobs").tBodies[0].replaceChildren(...jobs.map((j) => jobRow(j.id)));
  }

  function showProgress(row, p) {
    const box = cell(row, "progress");
    const parts = [p.stage];
    if (p.step && p.total_steps) {
      parts.push(`step ${p.step}/${p.total_steps}`);
      if (p.elapsed_s && p.step < p.total_steps) {
        const eta = (p.elapsed_s / p.step) * (p.total_steps - p.step);
        parts.push(`ETA ${eta < 1 ? "<1" : Math.round(eta)} s`);
      }
    }
    box.textContent = parts.join(" · ");
    box.dataset.stage = p.stage;
    box.dataset.step = p.step || 0;
  }

  async function attachVideo(row, id) {
    const video = document.createElement("video");
    video.controls = true;
    video.muted = true;
    video.preload = "auto";
    video.playsInline = true;
    videos.set(id, video);
    cell(row, "video").replaceChildren(video);
    try {
      // Fetched with the token header; a <video src> could not carry it.
      const response = await api(`/v1/jobs/${encodeURIComponent(id)}/output`);
      video.src = URL.createObjectURL(await response.blob());
    } catch (err) {
      videos.delete(id);
      cell(row, "video").textContent = "video unavailable";
    }
  }

  // -- memory chart -----------------------------------------------------------------------------

  function addSample(device, ts, used, total) {
    const series = memory.get(device) || [];
    if (series.length && series[series.length - 1].ts >= ts) return;
    series.push({ ts, used, total });
    while (series.length && series[0].ts < ts - MEMORY_WINDOW_S) series.shift();
    memory.set(device, series);
  }

  function drawMemory() {
    const svg = $("memory-chart");
    const ns = "http://www.w3.org/2000/svg";
    const nodes = [];
    const now = Date.now() / 1000;
    const lines = [];
    let first = now;
    memory.forEach((series) => { if (series.length) first = Math.min(first, series[0].ts); });
    // The chart spans the samples kept (at least a minute, at most MEMORY_WINDOW_S).
    const span = Math.min(MEMORY_WINDOW_S, Math.max(60, now - first));
    memory.forEach((series, device) => {
      if (!series.length) return;
      const top = Math.max(...series.map((s) => s.total || s.used), 1);
      const point = (s, v) => `${(600 - ((now - s.ts) / span) * 600).toFixed(1)},${(115 - (v / top) * 105).toFixed(1)}`;
      for (const [cls, key] of [["used", "used"], ["total", "total"]]) {
        const line = document.createElementNS(ns, "polyline");
        line.setAttribute("class", cls);
        line.setAttribute("points", series.map((s) => point(s, s[key])).join(" "));
        nodes.push(line);
      }
      const last = series[series.length - 1];
      lines.push(`${device}: ${(last.used / 2 ** 30).toFixed(2)} of ${(last.total / 2 ** 30).toFixed(2)} GiB used`);
    });
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", "4");
    label.setAttribute("y", "12");
    label.textContent = `last ${Math.round(span)} s (solid: used, dashed: total)`;
    nodes.push(label);
    svg.replaceChildren(...nodes);
    $("memory-now").textContent = lines.join(" · ");
  }

  // -- events -----------------------------------------------------------------------------------

  function summary(event) {
    const d = event.data || {};
    switch (event.type) {
      case "supervisor.transition": return `${d.from} → ${d.to} (${d.trigger}) ${d.error_code || ""} ${d.reason || ""}`;
      case "job.progress": return `${d.job_id} ${d.stage} ${d.step ? `${d.step}/${d.total_steps}` : ""}`;
      case "job.retrying": return `${d.job_id} attempt ${d.attempt}: ${d.reason}`;
      case "job.failed": return `${d.job_id} ${d.error && d.error.title}: ${d.error && d.error.message}`;
      case "bus.lagged": return `${d.dropped} events dropped for this page (from seq ${d.resume_from})`;
      default: return JSON.stringify(d).slice(0, 240);
    }
  }

  function matches(filter, type) {
    if (!filter) return true;
    if (filter.startsWith("-")) return type !== filter.slice(1);
    return type === filter;
  }

  function logItem(event) {
    const li = el("li", null, event.type === "bus.lagged" ? "lag" : "");
    li.dataset.type = event.type;
    li.appendChild(el("time", `${clock(event.ts)} #${event.seq} `));
    li.appendChild(el("span", event.type, "type"));
    li.appendChild(el("span", ` ${summary(event)}`));
    return li;
  }

  function renderLog() {
    const filter = $("event-filter").value;
    const shown = events.filter((e) => matches(filter, e.type)).slice(-200).reverse();
    $("events").replaceChildren(...shown.map(logItem));
  }

  function addFilterOption(type) {
    const select = $("event-filter");
    if ([...select.options].some((o) => o.value === type)) return;
    select.appendChild(el("option", type)).value = type;
  }

  $("event-filter").addEventListener("change", renderLog);

  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      try { renderStatus(await (await api("/v1/status")).json()); } catch (err) { /* next event */ }
    }, 150);
  }

  function handle(event) {
    if (typeof event.seq === "number") {
      const ahead = event.type === "bus.gap" && event.data.reason === "ahead";
      lastSeq = ahead ? event.seq : Math.max(lastSeq || 0, event.seq);
      body.dataset.seq = String(lastSeq); // where a reconnect resumes
    }
    events.push(event);
    if (events.length > KEEP_EVENTS) events.shift();
    addFilterOption(event.type);
    if (matches($("event-filter").value, event.type)) {
      const list = $("events");
      list.prepend(logItem(event));
      while (list.children.length > 200) list.lastChild.remove();
    }
    const d = event.data || {};
    switch (event.type) {
      case "vram.sample":
        addSample(d.device, event.ts, d.used, d.total);
        return;
      case "job.progress":
        progress.set(d.job_id, d);
        showProgress(jobRow(d.job_id), d);
        return;
      case "supervisor.transition":
        if (event.seq <= snapshotSeq) break; // replayed: already in the figures read
        setState(d.to, event.ts);
        markEdge(d.from, d.to);
        $("walk").appendChild(walkItem({ ts: event.ts, from: d.from, to: d.to, trigger: d.trigger, code: d.error_code, reason: d.reason }));
        $("walk").scrollTop = $("walk").scrollHeight;
        break;
      case "job.retrying":
        retries.set(d.job_id, d);
        break;
      case "bus.lagged":
        $("lagged").hidden = false;
        $("lagged").textContent = `${d.dropped} events were dropped for this page (seq ${d.resume_from} on); the figures were read again`;
        break;
      default:
        break;
    }
    scheduleRefresh();
  }

  // -- the socket -------------------------------------------------------------------------------

  const pending = [];

  function drain() {
    const batch = pending.splice(0, pending.length);
    batch.forEach((event) => {
      try { handle(event); } catch (err) { console.warn("event not shown", event.type, err); }
    });
    drawMemory();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const since = lastSeq === null ? "" : `?since=${lastSeq}`;
    const protocols = ["genvisor.v1"];
    if (token) protocols.push(`genvisor.bearer.${base64url(token)}`);
    socket = new WebSocket(`${scheme}//${location.host}${base}/v1/events${since}`, protocols);
    socket.onopen = () => {
      retryDelay = 1000;
      $("conn").textContent = "live";
      $("conn").className = "conn live";
    };
    socket.onmessage = (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch (err) { return; /* not an event */ }
      // Drawn once per frame, however many events came: a busy job never starves its worker
      // of the CPU this page shares with it.
      pending.push(event);
      if (pending.length === 1) requestAnimationFrame(drain);
    };
    socket.onclose = (close) => {
      socket = null;
      $("conn").className = "conn down";
      if (close.code === 1008 && token !== null && /token/.test(close.reason)) {
        askToken("The token was refused; enter it again.");
        return;
      }
      $("conn").textContent = `disconnected (${close.code}); reconnecting…`;
      // One timer per lost connection (not a polling loop); it resumes after lastSeq.
      setTimeout(() => { start(); }, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 15000);
    };
  }

  async function start() {
    if (body.dataset.token === "required" && !token) {
      askToken("");
      return;
    }
    let data;
    try {
      data = await (await api("/v1/status")).json();
    } catch (err) {
      if (token || body.dataset.token !== "required") {
        $("conn").textContent = "server unreachable; retrying…";
        setTimeout(start, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 15000);
      }
      return;
    }
    $("token-form").hidden = true;
    $("main").hidden = false;
    renderStatus(data);
    if (lastSeq === null) lastSeq = Math.max(0, data.state.bus.last_seq - 200);
    connect();
  }

  start();
})();
