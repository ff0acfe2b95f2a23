// The operations dashboard: renders the JSON of /v1/dashboard?format=json (embedded at load, then polled).
// Every value goes in through textContent, never innerHTML: error messages can hold client-chosen text.
(function () {
  "use strict";
  const script = document.currentScript;
  const jsonUrl = script.dataset.jsonUrl;
  const refreshMs = 1000 * Number(script.dataset.refreshS);
  const COLORS = { requests: "#1f77b4", errors: "#d62728", mean: "#2ca02c", max: "#ff7f0e" };
  const charts = {};
  window.dashboardCharts = charts;  // for tests and the console

  function $(id) { return document.getElementById(id); }
  function set(id, text) { $(id).textContent = text; }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }
  function ms(v) { return v === null || v === undefined ? "–" : v.toFixed(1); }
  function duration(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    return m + "m " + Math.floor(s % 60) + "s";
  }
  function clock(epochS) { return new Date(epochS * 1000).toLocaleTimeString(); }

  // Replace a table's body with one row per item; cells are [text, className] or text.
  function fillTable(id, items, cells, rowData) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    if (!items.length) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.colSpan = $(id).tHead.rows[0].cells.length;
      cell.className = "empty";
      cell.textContent = "none";
      return;
    }
    for (const item of items) {
      const row = body.insertRow();
      if (rowData) Object.assign(row.dataset, rowData(item));
      for (const spec of cells(item)) {
        const [text, cls] = Array.isArray(spec) ? spec : [spec, ""];
        const cell = row.insertCell();
        cell.textContent = text;
        if (cls) cell.className = cls;
      }
    }
  }

  // One uPlot chart per id, created on the first render and fed new data on the later ones. Points are
  // drawn where asked (latency: minutes without requests have no value, so a lone minute is a point).
  function chart(id, series, data, points) {
    const el = $(id);
    const opts = {
      width: Math.max(300, el.clientWidth),
      height: 220,
      series: [{}].concat(series.map(([label, color]) => ({
        label: label, stroke: color, width: 2, points: { show: points, size: 5, fill: color },
      }))),
      axes: [{}, { size: 60 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    };
    if (charts[id]) charts[id].setData(data);
    else charts[id] = new uPlot(opts, data, el);
  }

  function render(d) {
    set("version", d.server.version);
    set("uptime", duration(d.server.uptime_s));
    set("updated", new Date().toLocaleTimeString());
    set("total-requests", String(d.requests.total));
    set("total-errors", String(d.requests.errors));
    $("total-errors").className = "big" + (d.requests.errors ? " bad" : "");
    const l = d.latency_ms;
    set("latency", ms(l.p50_ms) + " / " + ms(l.p95_ms) + " / " + ms(l.p99_ms) + " ms");
    const ready = d.models.filter((m) => m.status === "ready").length;
    set("models-ready", ready + " / " + d.models.length + (d.refused.length ? ", " + d.refused.length + " refused" : ""));
    $("models-ready").className = "big " + (ready === d.models.length && !d.refused.length ? "ok" : "warn");
    set("session-count", String(d.sessions.count));
    set("session-bytes", bytes(d.sessions.bytes) + " of " + bytes(d.sessions.max_bytes));
    set("process-rss", bytes(d.process.rss_bytes));
    set("process-cpu", d.process.cpu_percent.toFixed(0) + "% CPU, " + d.process.threads + " threads, "
      + bytes(d.process.system_available_bytes) + " free of " + bytes(d.process.system_memory_bytes));

    fillTable("models", d.models, (m) => [
      m.name, m.type, m.engine,
      [m.status + (m.error ? ": " + m.error : ""), m.status === "ready" ? "ok" : (m.status === "failed" ? "bad" : "warn")],
      m.source, [String(m.requests), "num requests"],
      Object.entries(m.inference_ms).map(([stage, v]) => stage + " " + v.toFixed(0) + " ms").join(", ") || "–",
    ], (m) => ({ model: m.name }));
    $("refused-section").hidden = !d.refused.length;
    fillTable("refused", d.refused, (r) => [[r.name, "bad"], r.reason], (r) => ({ model: r.name }));
    $("training-section").hidden = !d.training;
    if (d.training) {
      const t = d.training;
      set("training-state", t.model + ": " + t.status + (t.dice_before === undefined ? "" : ", validation Dice "
        + t.dice_before + " → " + t.dice_after) + (t.installed ? ", installed as " + t.version : "")
        + (t.reason ? " (" + t.reason + ")" : ""));
      set("training-progress", t.progress.join("\n"));
    }
    fillTable("endpoints", d.requests.by_endpoint, (r) => [
      r.method, r.endpoint, [String(r.requests), "num requests"], [String(r.errors), "num errors" + (r.errors ? " bad" : "")],
      [ms(r.p50_ms), "num"], [ms(r.p95_ms), "num"], [ms(r.p99_ms), "num"],
    ], (r) => ({ method: r.method, endpoint: r.endpoint }));
    fillTable("by-model", Object.entries(d.requests.by_model), ([name, n]) => [
      name === "-" ? "(none named)" : name, [String(n), "num requests"]],
      ([name]) => ({ model: name }));
    fillTable("by-status", Object.entries(d.requests.by_status), ([status, n]) => [
      [status, Number(status) >= 400 ? "bad" : ""], [String(n), "num count"],
    ], ([status]) => ({ status: status }));
    fillTable("sessions", d.sessions.items, (s) => [
      s.id, s.size.join("×"), [bytes(s.bytes), "num"], [duration(s.age_s), "num"], [duration(s.idle_s), "num"],
      [duration(s.expiry_s), "num"],
    ], (s) => ({ session: s.id }));
    const store = d.cluster.store, backend = d.cluster.backend || { kind: "in-process" };
    const deployments = Object.entries(backend.deployments || {}).map(([m, x]) =>
      m + " " + x.status + " " + Object.entries(x.replicas).map(([k, v]) => v + " " + k).join(", "));
    set("cluster-state", "sessions: " + store.kind + (store.url ? " " + store.url : "") +
      (store.reachable === false ? " (unreachable)" : "") + "; inference: " + backend.kind +
      (backend.address ? " " + backend.address : "") + (deployments.length ? "; " + deployments.join("; ") : ""));
    fillTable("replicas", backend.served_by || [], (r) => [
      r.model, r.replica, r.node.slice(0, 12), [String(r.requests), "num"], [r.seconds.toFixed(1), "num"],
    ]);
    fillTable("errors", d.recent_errors, (e) => [
      clock(e.time), [String(e.status), "bad"], e.method, e.endpoint, e.model, e.message,
    ]);
    $("gpu-section").hidden = !d.process.gpus.length;
    fillTable("gpus", d.process.gpus, (g) => [
      String(g.index), g.name, [bytes(g.memory_allocated_bytes), "num"], [bytes(g.memory_reserved_bytes), "num"],
      [bytes(g.memory_total_bytes), "num"],
    ]);

    const s = d.series;
    chart("chart-rate", [["requests", COLORS.requests], ["errors", COLORS.errors]], [s.time, s.requests, s.errors], false);
    chart("chart-latency", [["mean ms", COLORS.mean], ["max ms", COLORS.max]],
      [s.time, s.latency_mean_ms, s.latency_max_ms], true);
    document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
  }

  async function refresh() {
    try {
      const reply = await fetch(jsonUrl, { credentials: "same-origin", cache: "no-store" });
      if (!reply.ok) throw new Error("HTTP " + reply.status);
      render(await reply.json());
      $("refresh-error").hidden = true;
    } catch (err) {
      $("refresh-error").hidden = false;
      $("refresh-error").textContent = "refresh failed: " + err.message;
    }
  }

  render(JSON.parse($("dashboard-data").textContent));
  setInterval(refresh, refreshMs);
})();
