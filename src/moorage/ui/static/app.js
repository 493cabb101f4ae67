// moorage dashboard: charts drawn with uPlot from JSON URLs, re-fetched every few seconds, and page regions
// marked data-live refreshed from the page itself. No build step, no dependencies besides uPlot.
(function () {
  "use strict";
  var POLL_MS = 1000 * (parseFloat(document.body.dataset.pollSeconds) || 5);
  var WINDOW_KEY = "moorage.window";
  var charts = [];

  function currentWindow() {
    try { return localStorage.getItem(WINDOW_KEY) || "hour"; } catch (e) { return "hour"; }
  }

  // The server renders tables over the same window as the charts: it reads this cookie (not a secret).
  function shareWindow() {
    document.cookie = "moorage_window=" + currentWindow() + "; path=/ui; SameSite=Strict";
  }

  function withWindow(src) {
    var url = new URL(src, location.href);
    url.searchParams.set("window", currentWindow());
    return url.toString();
  }

  function formatValue(unit) {
    return function (u, v) {
      if (v == null) { return "—"; }
      var abs = Math.abs(v);
      var text = Number.isInteger(v) && abs < 1e4 ? String(v) : abs >= 1e6 ? (v / 1e6).toFixed(1) + "M" : abs >= 1e4 ? (v / 1e3).toFixed(1) + "k"
        : abs >= 100 ? v.toFixed(0) : abs >= 1 ? v.toFixed(2) : v.toPrecision(2);
      return unit ? text + " " + unit : text;
    };
  }

  var COLORS = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7b83", "#57606a"];

  function makePlot(el, data) {
    var unit = el.dataset.unit || "";
    var series = [{}];
    data.series.forEach(function (s, i) {
      series.push({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
                    value: formatValue(unit), points: { show: data.x.length < 80 } });
    });
    var opts = {
      width: Math.max(el.clientWidth, 240), height: 200, series: series,
      axes: [{}, { values: function (u, vals) { return vals.map(function (v) { return formatValue("")(u, v); }); }, size: 60 }],
      // Counts, latencies and rates start at zero: a flat line of 25 requests should not look like a drop.
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [Math.min(0, min), max > 0 ? max * 1.1 : 1]; } } },
      legend: { live: true }
    };
    return new uPlot(opts, toColumns(data), el);
  }

  function toColumns(data) {
    return [data.x].concat(data.series.map(function (s) { return s.values; }));
  }

  function summarize(el, data) {
    var points = 0, sum = 0;
    data.series.forEach(function (s) {
      s.values.forEach(function (v) { if (v != null) { points += 1; sum += v; } });
    });
    // For people reading the page's source and for the browser tests: what the last render drew.
    el.dataset.points = String(points);
    el.dataset.total = String(sum);
    el.dataset.renders = String((parseInt(el.dataset.renders, 10) || 0) + 1);
    el.dataset.updated = String(Date.now());
  }

  function refresh(chart) {
    var el = chart.el;
    return fetch(withWindow(el.dataset.src), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (data) {
        var shape = data.series.map(function (s) { return s.label; }).join("\u0000");
        if (chart.plot && chart.shape === shape) {
          chart.plot.setData(toColumns(data));
        } else {
          if (chart.plot) { chart.plot.destroy(); }
          el.textContent = "";
          if (!data.series.length) {
            var empty = document.createElement("div");
            empty.className = "empty";
            empty.textContent = "No data yet";
            el.appendChild(empty);
            chart.plot = null;
          } else {
            chart.plot = makePlot(el, data);
          }
          chart.shape = shape;
        }
        summarize(el, data);
        el.removeAttribute("data-error");
      })
      .catch(function (err) { el.dataset.error = String(err.message || err); });
  }

  // Regions marked data-live="ID" are replaced by the same region of a fresh copy of the page, unless
  // someone is typing in one of their inputs.
  function refreshLive() {
    var regions = document.querySelectorAll("[data-live]");
    if (!regions.length) { return Promise.resolve(); }
    return fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        regions.forEach(function (region) {
          if (region.contains(document.activeElement) && document.activeElement.tagName === "INPUT") { return; }
          var other = fresh.querySelector('[data-live="' + region.dataset.live + '"]');
          if (other) { region.replaceWith(document.importNode(other, true)); }
        });
      })
      .catch(function () { /* the next poll tries again */ });
  }

  function setupWindowSwitch() {
    document.querySelectorAll(".window-switch button").forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.dataset.window === currentWindow()));
      button.addEventListener("click", function () {
        try { localStorage.setItem(WINDOW_KEY, button.dataset.window); } catch (e) { /* private mode */ }
        document.querySelectorAll(".window-switch button").forEach(function (b) {
          b.setAttribute("aria-pressed", String(b.dataset.window === button.dataset.window));
        });
        shareWindow();
        charts.forEach(refresh);
        refreshLive();
      });
    });
  }

  function setupConfirms() {
    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) { event.preventDefault(); }
    });
  }

  function start() {
    document.querySelectorAll(".chart-plot[data-src]").forEach(function (el) { charts.push({ el: el, plot: null }); });
    shareWindow();
    setupWindowSwitch();
    setupConfirms();
    charts.forEach(refresh);
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) { return; }
      busy = true;
      Promise.all(charts.map(refresh).concat([refreshLive()])).then(function () { busy = false; });
    }, POLL_MS);
    window.addEventListener("resize", function () {
      charts.forEach(function (c) { if (c.plot) { c.plot.setSize({ width: Math.max(c.el.clientWidth, 240), height: 200 }); } });
    });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
}());
