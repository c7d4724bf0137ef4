// queuectl dashboard: live updates by polling the server's JSON once a second.
// Untrusted text (ids, commands, errors, output) only ever goes into textContent or
// attribute values set through the DOM: never innerHTML. No inline script anywhere (CSP).
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";
  const readOnly = (document.querySelector('meta[name="read-only"]') || {}).content === "1";
  const TICK_MS = 1000;
  const CHART_MS = 15000;
  const live = document.getElementById("live");

  function get(obj, path) {
    return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
  }

  function age(s) {
    if (s == null) return "-";
    s = Math.max(0, s);
    const units = [["d", 86400], ["h", 3600], ["m", 60]];
    for (const [u, size] of units) {
      if (s >= size) return (s >= 10 * size ? (s / size).toFixed(0) : (s / size).toFixed(1)) + u;
    }
    return s >= 10 ? s.toFixed(0) + "s" : s.toFixed(1) + "s";
  }

  function format(value, fmt) {
    if (fmt === "age") return age(value);
    if (fmt === "secs") {
      if (value == null) return "-";
      if (value < 1) return (value * 1000).toFixed(0) + " ms";
      return value < 60 ? value.toFixed(2) + " s" : age(value);
    }
    if (fmt === "paused") return value ? "paused" : "running";
    if (fmt === "length") return String(value.length);
    return value == null ? "-" : String(value);
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text != null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  // A table body's rows, or one row saying why there are none.
  function fillTable(tbody, rows, emptyText, columns) {
    if (!rows.length) {
      const td = el("td", emptyText);
      td.colSpan = columns;
      const tr = el("tr", null, "empty");
      tr.appendChild(td);
      rows = [tr];
    }
    tbody.replaceChildren(...rows);
  }

  function link(href, text) {
    const a = el("a", text);
    a.setAttribute("href", href);
    return a;
  }

  function actionForm(name, label, id, cls) {
    const form = el("form", null, "act");
    form.method = "post";
    form.action = "/actions/" + name;
    for (const [k, v] of [["csrf", csrf], ["id", id],
                          ["next", location.pathname + location.search]]) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = k;
      input.value = v;
      form.appendChild(input);
    }
    const button = el("button", label, cls || "");
    button.type = "submit";
    button.dataset.action = name;
    form.appendChild(button);
    return form;
  }

  async function fetchJSON(url) {
    const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
    if (!response.ok) throw new Error(url + ": " + response.status);
    return response.json();
  }

  function setLive(ok) {
    if (!live) return;
    live.classList.toggle("down", !ok);
    live.textContent = ok ? "live" : "offline";
  }

  function applySnapshot(snap) {
    for (const node of document.querySelectorAll("[data-k]")) {
      const value = get(snap, node.dataset.k);
      if (value !== undefined) node.textContent = format(value, node.dataset.fmt);
    }
    for (const node of document.querySelectorAll("[data-show-if]")) {
      const cond = node.dataset.showIf;
      const want = cond.startsWith("!") ? !get(snap, cond.slice(1)) : !!get(snap, cond);
      node.hidden = !want;
    }
    const workers = document.querySelector("#workers tbody");
    if (workers) renderWorkers(workers, snap.workers);
    body.dataset.generated = String(snap.generated_at);
  }

  function renderWorkers(tbody, workers) {
    const rows = workers.map((w) => {
      const tr = el("tr");
      tr.appendChild(el("td", w.host));
      tr.appendChild(el("td", w.pid));
      tr.appendChild(el("td", w.state));
      const job = el("td");
      job.appendChild(w.current_job ? link("/jobs/" + encodeURIComponent(w.current_job), w.current_job)
                                    : document.createTextNode("-"));
      tr.appendChild(job);
      tr.appendChild(el("td", w.jobs_done));
      tr.appendChild(el("td", w.jobs_failed));
      tr.appendChild(el("td", w.cpu_percent == null ? "-" : w.cpu_percent.toFixed(0) + " %"));
      tr.appendChild(el("td", w.rss_mb == null ? "-" : w.rss_mb.toFixed(1) + " MB"));
      tr.appendChild(el("td", age(w.uptime_s)));
      return tr;
    });
    fillTable(tbody, rows, "no workers running: queuectl worker start", 9);
  }

  function when(iso) {
    return typeof iso === "string" && iso.length >= 19 && iso[10] === "T"
      ? iso.slice(0, 10) + " " + iso.slice(11, 19) : (iso == null ? "-" : iso);
  }

  function renderJobs(tbody, rows) {
    const out = rows.map((r) => {
      const tr = el("tr");
      tr.dataset.id = r.id;
      const id = el("td", null, "id");
      id.appendChild(r.state === "rejected" ? document.createTextNode(r.id)
                                            : link("/jobs/" + encodeURIComponent(r.id), r.id));
      tr.appendChild(id);
      const st = el("td");
      st.appendChild(el("span", r.state, "state s-" + r.state));
      tr.appendChild(st);
      const cmd = el("td", r.command == null ? "-" : r.command, "cmd");
      cmd.title = r.command || "";
      tr.appendChild(cmd);
      tr.appendChild(el("td", r.priority == null ? "-" : r.priority));
      tr.appendChild(el("td", (r.attempts || 0) + "/" + (r.max_retries == null ? "-" : r.max_retries + 1)));
      tr.appendChild(el("td", when(r.updated_at), "when"));
      tr.appendChild(el("td", r.last_error || "", "err"));
      const acts = el("td", null, "acts");
      if (!readOnly) {
        if (r.state === "failed") acts.appendChild(actionForm("retry", "Retry now", r.id));
        if (["pending", "failed", "processing"].includes(r.state))
          acts.appendChild(actionForm("cancel", "Cancel", r.id, "danger"));
        if (r.state === "dead") acts.appendChild(actionForm("dlq-retry", "Retry", r.id));
      }
      tr.appendChild(acts);
      return tr;
    });
    fillTable(tbody, out, "no jobs here", 8);
  }

  function secs(value) {
    return format(value, "secs");
  }

  function renderAttempts(tbody, attempts) {
    const rows = attempts.map((a) => {
      const tr = el("tr");
      tr.appendChild(el("td", a.attempt));
      tr.appendChild(el("td", when(a.started_at), "when"));
      tr.appendChild(el("td", a.worker));
      tr.appendChild(el("td", a.outcome || "running",
                        a.outcome === "ok" ? "ok" : a.outcome ? "err" : ""));
      tr.appendChild(el("td", secs(a.duration_s)));
      return tr;
    });
    fillTable(tbody, rows, "not run yet", 5);
  }

  // ---- the job page: state, fields and the output log, followed from an offset ----------
  let offset = Number(body.dataset.offset || 0);

  function applyJob(data) {
    const state = document.getElementById("job-state");
    if (state) {
      state.textContent = data.state;
      state.className = "state s-" + data.state;
    }
    for (const span of document.querySelectorAll("[data-for-states]")) {
      span.hidden = !span.dataset.forStates.split(" ").includes(data.state);
    }
    const fields = document.getElementById("job-fields");
    if (fields && data.job) {
      const known = new Set();
      for (const td of fields.querySelectorAll("td[data-field]")) {
        const key = td.dataset.field;
        known.add(key);
        const value = key === "state" ? data.state : data.job[key];
        td.textContent = value == null ? "null" : typeof value === "string" ? value
                                                 : JSON.stringify(value, null, 2);
      }
      for (const [key, value] of Object.entries(data.job)) {
        if (known.has(key) || key === "command" || key === "history") continue;
        const tr = el("tr");
        tr.appendChild(el("th", key));
        const td = el("td", typeof value === "string" ? value : JSON.stringify(value, null, 2));
        td.dataset.field = key;
        tr.appendChild(td);
        const file = fields.querySelector("td.path");
        fields.querySelector("tbody").insertBefore(tr, file ? file.parentNode : null);
      }
    }
    const attempts = document.querySelector("#job-attempts tbody");
    if (attempts && data.attempts) renderAttempts(attempts, data.attempts);
    const out = document.getElementById("job-output");
    if (out && data.output_end > offset) {
      if (data.output_start > offset) out.textContent = "";
      out.appendChild(document.createTextNode(data.output));
      offset = data.output_end;
      body.dataset.offset = String(offset);
      const pinned = out.scrollHeight - out.scrollTop - out.clientHeight < 40;
      if (pinned) out.scrollTop = out.scrollHeight;
    }
  }

  async function tick() {
    try {
      if (page === "overview" || page === "jobs" || page === "dlq") {
        applySnapshot(await fetchJSON("/api/snapshot"));
      }
      if ((page === "jobs" || page === "dlq") && body.dataset.live === "1") {
        const params = new URLSearchParams();
        if (body.dataset.state) params.set("state", body.dataset.state);
        if (body.dataset.q) params.set("q", body.dataset.q);
        const data = await fetchJSON("/api/jobs?" + params.toString());
        renderJobs(document.querySelector("#jobs tbody"), data.rows);
      }
      if (page === "job") {
        applyJob(await fetchJSON("/api/jobs/" + encodeURIComponent(body.dataset.job) +
                                 "?offset=" + offset));
      }
      setLive(true);
    } catch (err) {
      setLive(false);
    }
    body.dataset.ticks = String(Number(body.dataset.ticks || 0) + 1);
    setTimeout(tick, TICK_MS);
  }

  function refreshCharts() {
    for (const img of document.querySelectorAll("img[data-chart]")) {
      const url = new URL(img.getAttribute("src"), location.href);
      url.searchParams.set("t", String(Date.now()));
      img.setAttribute("src", url.pathname + url.search);
    }
  }

  setTimeout(tick, TICK_MS);
  if (document.querySelector("img[data-chart]")) setInterval(refreshCharts, CHART_MS);
})();
