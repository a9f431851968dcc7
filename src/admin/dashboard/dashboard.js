// The sluice dashboard: reads /stats once a second, keeps the last minutes of every figure in
// memory (nothing is stored server-side), and draws one row per route and per upstream with
// uPlot. The DOM is built with createElement and textContent only (never innerHTML): route and
// upstream names come from the config and are shown as text, never parsed as markup.
//
// With admin.token_file, the sign-in page (the 401 answer to GET /) keeps the token in this
// tab's sessionStorage; every /stats request carries it as Authorization: Bearer.
"use strict";
(function () {
  const POLL_MS = 1000;
  const KEEP_SECONDS = 300; // history kept in the page: 5 minutes
  const STALE_MS = 5000; // no fresh figures for this long: say so
  const TOKEN_KEY = "sluice-admin-token";
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: "Bearer " + token } : {};

  const COLOR = {
    forwarded: "#2e7d32",
    rate_limited: "#e0a100",
    queue_full: "#c62828",
    queue_timeout: "#ef6c00",
    shed: "#8e24aa",
    upstream: "#6d4c41",
    other: "#90a4ae",
    inflight: "#1565c0",
    limit: "#263238",
    queue: "#ef6c00",
    waitP50: "#ffb74d",
    waitP99: "#e65100",
    latP50: "#64b5f6",
    latP99: "#0d47a1",
  };
  // 503s that mean the caps are pushing back: a route with any of them is "shedding".
  const SHEDDING = ["queue_full", "queue_timeout", "shed", "store_unavailable", "upstream_pushback"];
  const NAMED = ["forwarded", "rate_limited", "queue_full", "queue_timeout", "shed",
    "upstream_error", "upstream_timeout"];

  // Each chart: its title, its series (label, colour, how to read the value off a route or
  // upstream object of /stats), the unit of its axis, and whether 0 is always on the axis.
  const CHARTS = [
    {
      key: "traffic", title: "requests/s by outcome", fmt: fmtRate,
      series: [
        { label: "forwarded", color: COLOR.forwarded, get: (s) => s.requests_per_second.forwarded },
        { label: "429 rate limited", color: COLOR.rate_limited, get: (s) => s.requests_per_second.rate_limited },
        { label: "503 queue full", color: COLOR.queue_full, get: (s) => s.requests_per_second.queue_full },
        { label: "503 queue timeout", color: COLOR.queue_timeout, get: (s) => s.requests_per_second.queue_timeout },
        { label: "503 shed", color: COLOR.shed, get: (s) => s.requests_per_second.shed },
        { label: "502/504 upstream", color: COLOR.upstream,
          get: (s) => s.requests_per_second.upstream_error + s.requests_per_second.upstream_timeout },
        { label: "other", color: COLOR.other, get: otherRate },
      ],
    },
    {
      key: "concurrency", title: "in flight, cap and queue", fmt: fmtCount, whole: true,
      series: [
        { label: "in flight", color: COLOR.inflight, fill: "rgba(21,101,192,.12)", get: (s) => s.inflight },
        { label: "cap", color: COLOR.limit, dash: [5, 4], get: (s) => s.limit },
        { label: "queued", color: COLOR.queue, fill: "rgba(239,108,0,.15)", get: (s) => s.queue_depth },
      ],
    },
    {
      key: "latency", title: "queue wait and upstream latency (ms)", fmt: fmtMs,
      series: [
        { label: "wait p50", color: COLOR.waitP50, get: (s) => ms(s.queue_wait_seconds.p50) },
        { label: "wait p99", color: COLOR.waitP99, get: (s) => ms(s.queue_wait_seconds.p99) },
        { label: "upstream p50", color: COLOR.latP50, get: (s) => ms(s.upstream_latency_seconds.p50) },
        { label: "upstream p99", color: COLOR.latP99, get: (s) => ms(s.upstream_latency_seconds.p99) },
      ],
    },
  ];

  // Rows by "route:name" / "upstream:name".
  const rows = new Map();
  let lastOk = 0;

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function ms(seconds) { return seconds === null || seconds === undefined ? null : seconds * 1000; }

  function otherRate(s) {
    let sum = 0;
    for (const [outcome, rate] of Object.entries(s.requests_per_second)) {
      if (!NAMED.includes(outcome)) sum += rate;
    }
    return sum;
  }

  function fmtRate(v) {
    if (v === null || v === undefined) return "–";
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2).replace(/\.?0+$/, "") || "0";
  }
  // Axis ticks: as few digits as tell them apart.
  function fmtTick(v) { return v === null ? "" : String(+v.toFixed(3)); }
  function fmtCount(v) { return v === null || v === undefined ? "–" : String(Math.round(v)); }
  function fmtMs(v) {
    if (v === null || v === undefined) return "–";
    if (v === 0) return "0";
    return v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2);
  }
  // An upstream's endpoints with their state (healthy, unhealthy, ejected, pushback), as text.
  function endpointsText(endpoints) {
    if (!endpoints || !endpoints.length) return "";
    return " · endpoints: " + endpoints.map((e) => e.address + " " + e.state + (e.protocol ? " " + e.protocol : "")).join(", ");
  }

  // An upstream's protocol as configured (http1, http2, auto), and whether it is TLS.
  function protocolText(s) {
    if (!s.protocol) return "";
    return " · " + (s.tls ? "https " : "http ") + s.protocol;
  }

  function withMs(seconds) {
    const v = ms(seconds);
    return v === null ? "–" : fmtMs(v) + " ms";
  }
  function fmtBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }
  function fmtAgo(seconds) {
    if (seconds < 90) return Math.max(0, Math.round(seconds)) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    return (seconds / 3600).toFixed(1) + " h ago";
  }
  function clock(unix) { return new Date(unix * 1000).toLocaleTimeString(); }

  // The state of a route or upstream, worst first: what its row's colour, badge and place say.
  function status(s) {
    const r = s.requests_per_second;
    if (SHEDDING.some((o) => r[o] > 0)) return { rank: 0, name: "shedding", badge: "SHEDDING" };
    if (r.rate_limited > 0) return { rank: 1, name: "limiting", badge: "RATE LIMITING" };
    if (s.queue_depth > 0) return { rank: 2, name: "queueing", badge: "QUEUEING" };
    return { rank: 3, name: "ok", badge: "OK" };
  }

  function makeChart(spec, cell) {
    const opts = {
      width: Math.max(cell.clientWidth, 200),
      height: 120,
      cursor: { drag: { x: false, y: false }, points: { size: 5 } },
      // Labels only: values under the cursor would make the legend jump as it moves.
      legend: { show: true, live: false },
      scales: {
        x: { time: true },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
      },
      axes: [
        { size: 22, font: "10px sans-serif", ticks: { size: 3 }, grid: { stroke: "#eef1f4" } },
        { size: 40, font: "10px sans-serif", ticks: { size: 3 }, grid: { stroke: "#eef1f4" },
          // Counts are whole: no tick between 0 and 1.
          incrs: spec.whole ? [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000] : undefined,
          values: (u, vals) => vals.map(fmtTick) },
      ],
      series: [{ label: "time" }].concat(spec.series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: 1.5,
        dash: s.dash,
        fill: s.fill,
        points: { show: false },
      }))),
    };
    const data = [[]].concat(spec.series.map(() => []));
    return { plot: new uPlot(opts, data, cell), data: data, spec: spec, cell: cell };
  }

  function makeRow(kind, name, container) {
    const row = el("section", "row");
    row.dataset.kind = kind;
    row.dataset.name = name;
    const summary = el("div", "summary");
    const title = el("div", "title");
    title.append(el("span", "name", name));
    const badge = el("span", "badge", "OK");
    title.append(badge);
    const mode = el("span", "badge mode", "SHADOW");
    mode.hidden = true;
    title.append(mode);
    summary.append(title);
    const meta = el("div", "meta");
    summary.append(meta);
    const figures = el("dl", "figures");
    const values = {};
    for (const [key, label] of [["admitted", "admitted"], ["rejected", "rejected"],
      ["inflight", "in flight / cap"], ["queue", "queued / room"], ["wait", "wait p99"],
      ["latency", "upstream p99"],
      kind === "route" ? ["keys", "rate-limit keys"] : ["keys", "utilization"]]
      .concat(kind === "route" ? [["deferred", "deferred tasks"]] : [])) {
      figures.append(el("dt", "", label));
      values[key] = el("dd", "", "–");
      figures.append(values[key]);
    }
    summary.append(figures);
    row.append(summary);
    const charts = CHARTS.map((spec) => {
      const cell = el("div", "chart");
      cell.dataset.chart = spec.key;
      cell.append(el("div", "chart-title", spec.title));
      const plot = el("div", "plot");
      cell.append(plot);
      row.append(cell);
      return { spec: spec, cell: cell, plot: plot };
    });
    container.append(row);
    // Charts are made once the row is in the page, so that they know their width.
    const made = charts.map((c) => Object.assign(makeChart(c.spec, c.plot), { box: c.cell }));
    return { row: row, badge: badge, mode: mode, meta: meta, values: values, charts: made };
  }

  function update(kind, list, container, now, order) {
    const seen = new Set();
    list.forEach((s, index) => {
      const id = kind + ":" + s.name;
      seen.add(id);
      let r = rows.get(id);
      if (!r) {
        r = makeRow(kind, s.name, container);
        rows.set(id, r);
      }
      const st = status(s);
      r.row.className = "row " + st.name;
      r.row.dataset.status = st.name;
      r.badge.textContent = st.badge;
      // Worst first; within a state, the config's order.
      r.row.style.order = String(st.rank * 10000 + index);
      r.mode.hidden = s.mode !== "shadow";
      r.meta.textContent = kind === "route"
        ? "→ " + s.upstream + " · priority " + s.priority
        : "routes: " + (s.routes.length ? s.routes.join(", ") : "none") + protocolText(s) + endpointsText(s.endpoints);
      const total = s.admitted_per_second + s.rejected_per_second;
      r.values.admitted.textContent = fmtRate(s.admitted_per_second) + " /s";
      r.values.rejected.textContent = fmtRate(s.rejected_per_second) + " /s" +
        (total > 0 ? " (" + Math.round(100 * s.rejected_per_second / total) + " %)" : "");
      r.values.rejected.classList.toggle("hot", s.rejected_per_second > 0);
      r.values.inflight.textContent = s.inflight + " / " + (s.limit === null ? "no cap" : s.limit + (s.adaptive ? " adaptive" : ""));
      r.values.queue.textContent = s.queue_capacity === null ? "no queue" : s.queue_depth + " / " + s.queue_capacity;
      r.values.queue.classList.toggle("hot", s.queue_capacity !== null && s.queue_capacity > 0 && s.queue_depth >= s.queue_capacity);
      r.values.wait.textContent = withMs(s.queue_wait_seconds.p99);
      r.values.latency.textContent = withMs(s.upstream_latency_seconds.p99);
      r.values.keys.textContent = kind === "route" ? String(s.rate_limit_keys)
        : s.utilization === null ? "no cap" : Math.round(100 * s.utilization) + " %";
      if (kind === "route") {
        const d = s.deferred;
        r.values.deferred.textContent = !d ? "–"
          : d.queued + " queued · " + d.delivering + " sending · " + d.dead + " dead" +
            (d.queued > 0 ? " (oldest " + Math.round(d.oldest_age_seconds) + " s)" : "");
        r.values.deferred.classList.toggle("hot", !!d && d.dead > 0);
      }
      for (const chart of r.charts) {
        const data = chart.data;
        data[0].push(now);
        chart.spec.series.forEach((series, i) => {
          const v = series.get(s);
          data[i + 1].push(v === undefined ? null : v);
        });
        while (data[0].length && data[0][0] < now - KEEP_SECONDS) {
          for (const column of data) column.shift();
        }
        chart.plot.setData(data);
        let max = 0;
        for (let i = 1; i < data.length; i++) {
          for (const v of data[i]) if (v !== null && v > max) max = v;
        }
        chart.box.dataset.points = String(data[0].length);
        chart.box.dataset.max = String(max);
      }
    });
    for (const [id, r] of rows) {
      if (id.startsWith(kind + ":") && !seen.has(id)) {
        for (const chart of r.charts) chart.plot.destroy();
        r.row.remove();
        rows.delete(id);
      }
    }
    order.push(...list.map((s) => ({ kind: kind, name: s.name, status: status(s) })));
  }

  function header(stats) {
    const set = (id, text, tone) => {
      const node = $(id);
      node.textContent = text;
      node.className = "pill" + (tone ? " " + tone : "");
    };
    set("health", stats.healthy ? "healthy" : "unhealthy", stats.healthy ? "good" : "bad");
    set("ready", stats.ready ? "ready" : "not ready", stats.ready ? "good" : "bad");
    set("generation", "config generation " + stats.generation + " · loaded " + clock(stats.reloaded_at) +
      " (" + fmtAgo(stats.time - stats.reloaded_at) + ")");
    set("reloads", "reloads " + stats.reloads_total.success + " ok, " + stats.reloads_total.failure + " failed",
      stats.reloads_total.failure > 0 ? "warn" : "");
    set("buffered", "buffered " + fmtBytes(stats.buffered_bytes) + " of " + fmtBytes(stats.max_buffered_bytes));
    const unrouted = stats.unrouted_per_second.no_route + stats.unrouted_per_second.bad_request;
    set("unrouted", "unrouted " + fmtRate(unrouted) + " /s", unrouted > 0 ? "warn" : "");
    set("updated", "updated " + clock(stats.time) + " · rates over " + stats.window_seconds.toFixed(1) + " s");
    $("routes-title").textContent = "Routes (" + stats.routes.length + ")";
    $("upstreams-title").textContent = "Upstreams (" + stats.upstreams.length + ")";
  }

  function verdict(order) {
    const node = $("verdict");
    const routes = order.filter((o) => o.kind === "route");
    const shedding = routes.filter((o) => o.status.name === "shedding").map((o) => o.name);
    const limiting = routes.filter((o) => o.status.name === "limiting").map((o) => o.name);
    if (shedding.length) {
      node.className = "shedding";
      node.textContent = "Shedding (503): " + shedding.join(", ") +
        (limiting.length ? " · rate limiting (429): " + limiting.join(", ") : "");
    } else if (limiting.length) {
      node.className = "limiting";
      node.textContent = "Rate limiting (429): " + limiting.join(", ") + " · nothing shed";
    } else {
      node.className = "";
      node.textContent = "All " + routes.length + " routes admitting: nothing rejected in the last seconds";
    }
  }

  function stale(message) {
    const node = $("verdict");
    node.className = "stale";
    node.textContent = message;
    $("updated").className = "pill bad";
  }

  async function poll() {
    try {
      const res = await fetch("/stats", { headers: headers, cache: "no-store" });
      if (res.status === 401) {
        // The token is missing, wrong or was changed by a reload: sign in again.
        sessionStorage.removeItem(TOKEN_KEY);
        stale("401 from /stats: the admin token is needed. Reload the page to enter it.");
        return;
      }
      if (!res.ok) throw new Error("/stats answered " + res.status);
      const stats = await res.json();
      lastOk = Date.now();
      header(stats);
      const order = [];
      update("route", stats.routes, $("routes"), stats.time, order);
      update("upstream", stats.upstreams, $("upstreams"), stats.time, order);
      verdict(order);
    } catch (err) {
      if (Date.now() - lastOk > STALE_MS) {
        stale("No figures from /stats since " + (lastOk ? new Date(lastOk).toLocaleTimeString() : "the page opened") +
          " (" + err.message + "); the charts keep what they had.");
      }
    }
    setTimeout(poll, POLL_MS);
  }

  window.addEventListener("resize", () => {
    for (const r of rows.values()) {
      for (const chart of r.charts) {
        chart.plot.setSize({ width: Math.max(chart.cell.clientWidth, 200), height: 120 });
      }
    }
  });

  poll();
})();
