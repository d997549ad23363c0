// flowcore dashboard: live updates over server-sent events, the canvas Gantt, the log tail.
// No framework, no build step. Every page works without this script (it only adds liveness).
"use strict";
(function () {
  var live = document.getElementById("live");
  var busy = false, again = false, lastRefresh = 0, MIN_GAP_MS = 800;

  function setLive(on, text) {
    if (!live) return;
    live.className = "live " + (on ? "on" : "off");
    live.textContent = text;
  }

  // Swap in fresh server-rendered parts of the page ([data-live-src] elements).
  function refreshParts() {
    var parts = Array.prototype.slice.call(document.querySelectorAll("[data-live-src]"));
    return Promise.all(parts.map(function (el) {
      var src = el.getAttribute("data-live-src");
      return fetch(src, { headers: { "Accept": "text/html" } }).then(function (r) {
        if (!r.ok) return;
        if (r.headers.get("X-Flowcore-Final") === "1") el.removeAttribute("data-live-src");
        return r.text().then(function (html) {
          var y = window.scrollY;
          el.innerHTML = html;
          window.scrollTo(0, y);
        });
      }).catch(function () {});
    }));
  }

  var TAIL_PAGE = 1000;  // the lines a logs page answers at most (its default ?limit=)

  function tailLogs() {
    var box = document.querySelector("[data-log-tail]");
    if (!box) return Promise.resolve();
    var src = box.getAttribute("data-log-tail");
    var after = box.getAttribute("data-after-id") || "0";
    var url = src + (src.indexOf("?") >= 0 ? "&" : "?") + "after_id=" + encodeURIComponent(after);
    // The page renders its new lines (server-side, like the lines it came with).
    return fetch(url, { headers: { "Accept": "text/html" } }).then(function (r) { return r.ok ? r.text() : ""; }).then(function (html) {
      if (!html.trim()) return;
      var follow = document.getElementById("follow");
      var atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      box.insertAdjacentHTML("beforeend", html);
      var lines = box.querySelectorAll("[data-log-id]");
      box.setAttribute("data-after-id", lines[lines.length - 1].getAttribute("data-log-id"));
      var empty = document.getElementById("logs-empty");
      if (empty) empty.hidden = true;
      if ((follow && follow.checked) || atBottom) box.scrollTop = box.scrollHeight;
      // a full page: more lines wait after it (the run may have ended: no event will come)
      if (html.split('data-log-id="').length - 1 >= TAIL_PAGE) return tailLogs();
    }).catch(function () {});
  }

  function refresh() {
    if (busy) { again = true; return; }
    var wait = lastRefresh + MIN_GAP_MS - Date.now();
    if (wait > 0) { busy = true; setTimeout(function () { busy = false; refresh(); }, wait); return; }
    busy = true;
    lastRefresh = Date.now();
    Promise.all([refreshParts(), tailLogs(), drawCanvases(true)]).then(function () {
      busy = false;
      if (again) { again = false; refresh(); }
    });
  }

  // The Gantt of big runs: one canvas, bars drawn from /api/runs/{id}/timeline columns.
  var COLORS = { Completed: "#2e9e5b", Cached: "#25a7a0", Failed: "#d64545", TimedOut: "#d64545", NotRun: "#d64545",
                 Crashed: "#b0369e", Cancelled: "#d99a1e", Running: "#2f7fd6", Pending: "#9aa3ad" };
  var LABEL_W = 220, LANE_H = 22, TOP = 24;

  function drawCanvases(onlyLive) {
    var canvases = Array.prototype.slice.call(document.querySelectorAll("canvas[data-timeline-src]"));
    return Promise.all(canvases.map(function (canvas) {
      if (onlyLive && canvas.getAttribute("data-final") === "1") return null;
      return fetch(canvas.getAttribute("data-timeline-src")).then(function (r) {
        if (r.headers.get("X-Flowcore-Final") === "1") canvas.setAttribute("data-final", "1");
        return r.json();
      }).then(function (t) { canvas._timeline = t; paint(canvas); }).catch(function () {});
    }));
  }

  // A duration as the server writes it (flowcore.history.formatting.duration, " " gap).
  function duration(s) {
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    var m = Math.floor(s / 60), sec = Math.floor(s) % 60;
    if (m < 60) return m + "m" + (sec < 10 ? "0" : "") + sec + "s";
    var h = Math.floor(m / 60); m = m % 60;
    return h + "h" + (m < 10 ? "0" : "") + m + "m";
  }

  function paint(canvas) {
    var t = canvas._timeline; if (!t) return;
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth, height = TOP + LANE_H * t.lanes.length + 8;
    canvas.width = width * ratio; canvas.height = height * ratio; canvas.style.height = height + "px";
    var g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#6b7580";
    var track = width - LABEL_W - 8, span = t.span_s || 1;
    var ticks = [];
    for (var i = 0; i <= 5; i++) {
      var label = duration(span * i / 5);
      ticks.push(label);
      g.fillText(label, LABEL_W + track * i / 5 - (i === 5 ? g.measureText(label).width : 0), 14);
    }
    canvas.setAttribute("data-ticks", ticks.join("|"));
    t.lanes.forEach(function (name, i) {
      g.fillStyle = "#1d232a";
      g.fillText(name.length > 34 ? name.slice(0, 33) + "…" : name, 4, TOP + i * LANE_H + 15);
      g.fillStyle = "#e2e6ea";
      g.fillRect(0, TOP + i * LANE_H, width, 1);
    });
    var b = t.bars, n = b.lane.length;
    for (var k = 0; k < n; k++) {
      var x = LABEL_W + track * b.start[k] / span;
      var w = Math.max(1, track * (b.end[k] - b.start[k]) / span);
      g.fillStyle = COLORS[b.state[k]] || "#9aa3ad";
      g.fillRect(x, TOP + b.lane[k] * LANE_H + 4, w, 14);
      if (b.attempts[k] > 1) { g.fillStyle = "#d99a1e"; g.fillRect(x, TOP + b.lane[k] * LANE_H + 2, Math.max(w, 2), 2); }
    }
  }

  function hover(ev) {
    var canvas = ev.target, t = canvas._timeline, tip = canvas.nextElementSibling;
    if (!t || !tip) return;
    var rect = canvas.getBoundingClientRect(), x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    var lane = Math.floor((y - TOP) / LANE_H), track = rect.width - LABEL_W - 8;
    var at = (x - LABEL_W) / track * t.span_s, b = t.bars, slack = t.span_s / track * 2, found = -1;
    for (var k = 0; k < b.lane.length; k++) {
      if (b.lane[k] === lane && b.start[k] - slack <= at && at <= b.end[k] + slack) { found = k; break; }
    }
    if (found < 0) { tip.hidden = true; return; }
    tip.hidden = false;
    tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px";
    tip.textContent = t.tasks[b.task[found]] + " · " + b.state[found] + " · " +
      (b.end[found] - b.start[found]).toFixed(3) + " s" + (b.attempts[found] > 1 ? " · " + b.attempts[found] + " attempts" : "");
  }

  // Deployment actions (pause, resume, run now): forms marked data-action are posted
  // with the page's action token and answered in JSON; the live parts then refresh.
  // Without this script the same forms post normally and the server redirects back.
  function newRequestId() {
    var bytes = new Uint8Array(16);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function act(ev) {
    var form = ev.target;
    if (!form || form.tagName !== "FORM" || !form.hasAttribute("data-action")) return;
    ev.preventDefault();
    var meta = document.querySelector('meta[name="flowcore-csrf"]');
    var result = form.querySelector("[data-action-result]");
    var buttons = form.querySelectorAll("button");
    Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
    fetch(form.getAttribute("action"), {
      method: "POST", credentials: "same-origin",
      headers: { "Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded",
                 "X-Flowcore-CSRF": meta ? meta.getAttribute("content") : "" },
      body: new URLSearchParams(new FormData(form)).toString()
    }).then(function (r) {
      return r.json().catch(function () { return { error: "HTTP " + r.status }; }).then(function (body) {
        if (result) {
          result.className = "action-result " + (r.ok ? "ok" : "err");
          result.textContent = r.ok ? (body.id ? "queued run " + body.id.slice(0, 8) + (body.created ? "" : " (already queued)")
                                              : (body.paused ? "paused" : "resumed"))
                                    : (body.error || "HTTP " + r.status);
        }
        if (r.ok) {
          var rid = form.querySelector("[data-request-id]");
          if (rid) rid.value = newRequestId();
        }
      });
    }).catch(function (e) {
      if (result) { result.className = "action-result err"; result.textContent = String(e); }
    }).then(function () {
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
      lastRefresh = 0;
      refresh();
    });
  }
  document.addEventListener("submit", act);

  document.addEventListener("DOMContentLoaded", function () {
    drawCanvases(false);
    Array.prototype.forEach.call(document.querySelectorAll("canvas[data-timeline-src]"), function (c) {
      c.addEventListener("mousemove", hover);
      c.addEventListener("mouseleave", function () { if (c.nextElementSibling) c.nextElementSibling.hidden = true; });
    });
    window.addEventListener("resize", function () {
      Array.prototype.forEach.call(document.querySelectorAll("canvas[data-timeline-src]"), paint);
    });
    var box = document.querySelector("[data-log-tail]");
    if (box) box.scrollTop = box.scrollHeight;
    if (!window.EventSource) { setLive(false, "no live updates in this browser"); return; }
    // The change stream holds one of the ~6 connections a browser opens to this host:
    // a page in a background tab lets it go (else a 7th dashboard tab never loads, and
    // the open ones cannot fetch their updates), and catches up when shown again.
    var source = null;
    function connect() {
      if (source) return;
      source = new EventSource("/api/events");
      source.addEventListener("open", function () { setLive(true, "live"); });
      source.addEventListener("error", function () { setLive(false, "reconnecting…"); });
      source.addEventListener("change", refresh);
    }
    function disconnect() {
      if (!source) return;
      source.close();
      source = null;
      setLive(false, "paused in the background");
    }
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") { disconnect(); return; }
      connect();
      lastRefresh = 0;
      refresh();
    });
    if (document.visibilityState === "hidden") setLive(false, "paused in the background");
    else connect();
  });
})();
