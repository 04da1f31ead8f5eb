// wsgi_bg status pages: live output and state of a job, local times.
//
// Job text is only ever inserted with textContent / text nodes (never as
// HTML), and styled only with class names from a fixed set (fg-N, bg-N,
// a-b/d/i/u/s). The job page polls the JSON API with ?since=N for what is
// new, sending If-None-Match (the server answers an empty 304 when nothing
// changed): each poll holds a server thread for milliseconds, never for the
// job's life. Output is drawn as a terminal would: "\n" ends a line; after a
// lone "\r" the next text replaces the line (progress bars); ANSI SGR
// sequences set styles; other escape sequences are dropped: the same rules as
// the server's wsgi_bg.terminal.Screen.
(function () {
  "use strict";

  // -- the terminal: the same rules as wsgi_bg/terminal.py --------------------
  var TOKEN = /(\r|\n|\x1b(?:\[[0-?]*[ -\/]*[@-~]|\][^\x07\x1b\r\n]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*\x1b\\|[ -\/]*[0-~])?)/;
  var PARTIAL = /\x1b(?:\[[0-?]*[ -\/]*|\][^\x07\x1b\r\n]*\x1b?|[PX^_][^\x1b]*\x1b?|[ -\/]*)?$/;
  var SGR = /^\x1b\[([0-9;:]*)m$/;
  var ATTRS = { 1: ["b", true], 2: ["d", true], 3: ["i", true], 4: ["u", true],
                9: ["s", true], 22: ["bd", false], 23: ["i", false],
                24: ["u", false], 29: ["s", false] };

  function cube(v) { return v < 48 ? 0 : v < 115 ? 1 : Math.floor((v - 35) / 40); }

  function rgbTo256(r, g, b) {
    r = Math.min(Math.max(r, 0), 255);
    g = Math.min(Math.max(g, 0), 255);
    b = Math.min(Math.max(b, 0), 255);
    if (r === g && g === b) {
      if (r < 8) { return 16; }
      if (r > 248) { return 231; }
      // Python's round(): halves to even.
      var x = (r - 8) / 247 * 24, f = Math.floor(x), d = x - f;
      var n = d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
      return r < 238 ? 232 + n : 255;
    }
    return 16 + 36 * cube(r) + 6 * cube(g) + cube(b);
  }

  function Style() { this.fg = null; this.bg = null; this.attrs = {}; this.classes = ""; }

  Style.prototype.apply = function (params) {
    var codes = params ? params.replace(/:/g, ";").split(";").map(function (p) {
      return /^[0-9]+$/.test(p) ? parseInt(p, 10) : 0;
    }) : [0];
    var i = 0;
    while (i < codes.length) {
      var code = codes[i];
      i += 1;
      if (code === 0) {
        this.fg = this.bg = null;
        this.attrs = {};
      } else if (ATTRS.hasOwnProperty(code)) {
        var names = ATTRS[code][0];
        for (var k = 0; k < names.length; k++) {
          if (ATTRS[code][1]) { this.attrs[names[k]] = true; } else { delete this.attrs[names[k]]; }
        }
      } else if (code >= 30 && code <= 37) { this.fg = code - 30;
      } else if (code >= 90 && code <= 97) { this.fg = code - 90 + 8;
      } else if (code >= 40 && code <= 47) { this.bg = code - 40;
      } else if (code >= 100 && code <= 107) { this.bg = code - 100 + 8;
      } else if (code === 39) { this.fg = null;
      } else if (code === 49) { this.bg = null;
      } else if (code === 38 || code === 48) {
        var colour = null;
        if (i < codes.length && codes[i] === 5 && i + 1 < codes.length) {
          colour = codes[i + 1] < 256 ? codes[i + 1] : null;
          i += 2;
        } else if (i < codes.length && codes[i] === 2 && i + 3 < codes.length) {
          colour = rgbTo256(codes[i + 1], codes[i + 2], codes[i + 3]);
          i += 4;
        } else {
          i = codes.length;
        }
        if (colour !== null) {
          if (code === 38) { this.fg = colour; } else { this.bg = colour; }
        }
      }
    }
    var parts = [];
    if (this.fg !== null) { parts.push("fg-" + this.fg); }
    if (this.bg !== null) { parts.push("bg-" + this.bg); }
    var attrs = Object.keys(this.attrs).sort();
    for (var a = 0; a < attrs.length; a++) { parts.push("a-" + attrs[a]); }
    this.classes = parts.join(" ");
  };

  // feed(text) returns the lines it finished (each a list of [classes, text]);
  // .line is the line being written.
  function Screen(line, pendingCR, sgr) {
    this.line = line || [];
    this.pendingCR = !!pendingCR;
    this.style = new Style();
    if (sgr) { this.style.apply(sgr); }
    this.carry = "";
  }

  Screen.prototype.feed = function (text) {
    var finished = [];
    text = this.carry + text;
    this.carry = "";
    if (text.indexOf("\x1b") >= 0) {
      var partial = PARTIAL.exec(text);
      if (partial) {
        this.carry = text.slice(partial.index);
        text = text.slice(0, partial.index);
      }
    }
    var pieces = text.split(TOKEN);
    for (var i = 0; i < pieces.length; i++) {
      var p = pieces[i];
      if (!p) { continue; }
      if (p === "\n") {
        finished.push(this.line);
        this.line = [];
        this.pendingCR = false;
      } else if (p === "\r") {
        this.pendingCR = true;
      } else if (p.charAt(0) === "\x1b") {
        var m = SGR.exec(p);
        if (m) { this.style.apply(m[1]); }
      } else {
        if (this.pendingCR) { this.line = []; this.pendingCR = false; }
        this.line.push([this.style.classes, p]);
      }
    }
    return finished;
  };

  // For the tests of the rules above (they run this file under node).
  if (typeof window !== "undefined") { window.wsgiBgScreen = Screen; }
  if (typeof document === "undefined" || !document.addEventListener) { return; }

  // -- times ------------------------------------------------------------------
  function finite(x) { return typeof x === "number" && isFinite(x); }

  function setTime(el, epoch) {
    if (!el) { return; }
    if (!finite(epoch)) {
      el.removeAttribute("datetime");
      el.textContent = "\u2014";
      return;
    }
    var d = new Date(epoch * 1000);
    el.setAttribute("datetime", d.toISOString());
    el.textContent = d.toLocaleString();
  }

  function localTimes() {
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var d = new Date(times[i].getAttribute("datetime"));
      if (!isNaN(d.getTime())) {
        times[i].title = times[i].textContent;
        times[i].textContent = d.toLocaleString();
      }
    }
  }

  function duration(start, end) {
    if (!finite(start) || !finite(end)) { return ""; }
    var s = Math.max(0, end - start);
    if (s < 60) { return s.toFixed(1) + " s"; }
    var m = Math.floor(s / 60);
    s = Math.floor(s % 60);
    if (m < 60) { return m + " min " + (s < 10 ? "0" : "") + s + " s"; }
    return Math.floor(m / 60) + " h " + (m % 60 < 10 ? "0" : "") + (m % 60) + " min";
  }

  function elapsed(start, skew) {
    // Whole seconds while ticking: a tenth changing every second reads as noise.
    if (!finite(start)) { return ""; }
    var s = Math.max(0, Date.now() / 1000 + skew - start);
    return s < 60 ? Math.floor(s) + " s" : duration(0, s);
  }

  // -- the job page -----------------------------------------------------------
  function jobPage(box) {
    var byId = function (id) { return document.getElementById(id); };
    var api = box.getAttribute("data-api");
    var next = parseInt(box.getAttribute("data-next"), 10) || 0;
    var done = box.getAttribute("data-done") === "true";
    var serverNow = parseFloat(box.getAttribute("data-now"));
    var skew = finite(serverNow) ? serverNow - Date.now() / 1000 : 0;
    var started = parseFloat(box.getAttribute("data-started"));
    var out = byId("output");
    var follow = byId("follow");
    // Of a long output the server drew the last lines only, numbered from
    // data-first; count is the number of the last finished line.
    var first = parseInt(out.getAttribute("data-first"), 10) || 1;
    var count = first - 1 + out.querySelectorAll(".line").length;
    var current = out.querySelector(".line.current");
    if (current) { count -= 1; }

    // The line being written, as the server drew it.
    var line = [];
    if (current) {
      var nodes = current.querySelector(".text").childNodes;
      for (var i = 0; i < nodes.length; i++) {
        line.push([nodes[i].nodeType === 1 ? nodes[i].className : "", nodes[i].textContent]);
      }
    }
    var screen = new Screen(line, box.getAttribute("data-cr") === "1",
                            box.getAttribute("data-sgr"));

    function fill(el, segments) {
      var text = el.querySelector(".text");
      while (text.firstChild) { text.removeChild(text.firstChild); }
      for (var i = 0; i < segments.length; i++) {
        if (segments[i][0]) {
          var span = document.createElement("span");
          span.className = segments[i][0];
          span.textContent = segments[i][1];
          text.appendChild(span);
        } else {
          text.appendChild(document.createTextNode(segments[i][1]));
        }
      }
    }

    function newLine(n, before) {
      var el = document.createElement("div");
      el.className = "line";
      el.id = "L" + n;
      var a = document.createElement("a");
      a.className = "ln";
      a.href = "#L" + n;
      a.setAttribute("data-n", String(n));
      a.setAttribute("aria-hidden", "true");
      a.tabIndex = -1;
      var text = document.createElement("span");
      text.className = "text";
      el.appendChild(a);
      el.appendChild(text);
      out.insertBefore(el, before || null);
      return el;
    }

    // The lines before those the server drew, on demand: the raw output up
    // to the line break before line `first`, drawn by the same rules.
    var earlier = byId("earlier");
    var showEarlier = byId("show-earlier");
    function loadEarlier() {
      if (!earlier) { return Promise.resolve(); }
      showEarlier.disabled = true;
      return fetch(api + "/output.txt", {
        cache: "no-store", credentials: "same-origin"
      }).then(function (response) {
        if (!response.ok) { throw new Error(String(response.status)); }
        return response.text();
      }).then(function (text) {
        var end = -1;
        for (var k = 1; k < first; k++) {
          end = text.indexOf("\n", end + 1);
          if (end < 0) { break; }
        }
        var lines = new Screen().feed(text.slice(0, end + 1));
        var top = out.firstChild;
        for (var i = 0; i < lines.length && i < first - 1; i++) {
          fill(newLine(i + 1, top), lines[i]);
        }
        earlier.parentNode.removeChild(earlier);
        earlier = null;
      }).catch(function () {
        showEarlier.disabled = false;
      });
    }
    if (earlier && first > 1) {
      showEarlier.hidden = false;
      showEarlier.addEventListener("click", function () {
        var keep = out.scrollHeight - out.scrollTop;
        if (follow) { follow.checked = false; }
        loadEarlier().then(function () { out.scrollTop = out.scrollHeight - keep; });
      });
    }

    function atBottom() {
      return out.scrollHeight - out.scrollTop - out.clientHeight < 8;
    }

    function feed(text) {
      if (!text) { return; }
      var finished = screen.feed(text);
      for (var i = 0; i < finished.length; i++) {
        count += 1;
        var el = current || newLine(count);
        current = null;
        fill(el, finished[i]);
        el.classList.remove("current");
      }
      if (screen.line.length) {
        if (!current) {
          current = newLine(count + 1);
          current.classList.add("current");
        }
        fill(current, screen.line);
      }
      if (follow && follow.checked) { out.scrollTop = out.scrollHeight; }
    }

    function showText(boxId, textId, text) {
      byId(boxId).hidden = !text;
      byId(textId).textContent = text || "";
    }

    function progress(p) {
      var bar = byId("progress");
      byId("progress-box").hidden = !p;
      if (!p) { return; }
      var total = finite(p.total) && p.total > 0 ? p.total : null;
      if (total !== null && finite(p.done)) {
        bar.max = total;
        bar.value = Math.min(Math.max(p.done, 0), total);
      } else {
        bar.removeAttribute("value");  // indeterminate
      }
      var caption = finite(p.done) ? String(p.done) : "";
      if (total !== null) { caption += " / " + total; }
      if (p.message) { caption = caption ? caption + " \u00b7 " + p.message : p.message; }
      byId("progress-text").textContent = caption;
    }

    var HOW = {
      before_start: "cancelled before it started",
      stopped: "stopped by itself within its grace",
      killed: "killed: it was still running when its grace ran out",
      completed: "the job did not read it and completed its work within its" +
        " grace: its result is kept"
    };

    function badge(text, state) {
      var el = byId("state");
      el.textContent = text;
      el.className = "badge state-" + state;
    }

    function tick() {
      countdown();
      if (done) { return; }
      // Not started (or waiting for its next attempt): "—", as Started says.
      byId("duration").textContent = finite(started) ? elapsed(started, skew) : "\u2014";
    }

    // A job that may run again: "2 of 4", and "next attempt in 8 s" while a
    // retry waits (on the server's clock), as render.attempt_text says it.
    function countdown() {
      var next = byId("next-attempt");
      var at = next ? parseFloat(next.getAttribute("data-at")) : NaN;
      if (!next) { return; }
      next.textContent = isFinite(at) ? " \u00b7 next attempt in " +
        Math.max(0, Math.ceil(at - (Date.now() / 1000 + skew))) + " s" : "";
    }

    function attempts(job) {
      var retries = finite(job.retries) ? job.retries : 0;
      byId("attempt-dt").hidden = byId("attempt-info").hidden = !retries;
      if (!retries) { return; }
      byId("attempt").textContent = job.attempt + " of " + (retries + 1);
      byId("next-attempt").setAttribute("data-at",
        job.state === "queued" && finite(job.retry_at) ? String(job.retry_at) : "");
      countdown();
      var list = byId("attempts"), errors = job.errors || [];
      if (list.children.length === errors.length) { return; }
      list.textContent = "";
      errors.forEach(function (e) {
        var item = document.createElement("li");
        var head = document.createElement("p");
        var at = document.createElement("time");
        var error = document.createElement("pre");
        head.className = "attempt-head";
        head.textContent = "Attempt " + e.attempt + " \u00b7 " +
          String(e.state).replace("_", " ") + " \u00b7 ";
        setTime(at, e.ended_at);
        head.appendChild(at);
        error.className = "error";
        error.textContent = e.error || "";
        item.appendChild(head);
        item.appendChild(error);
        list.appendChild(item);
      });
      byId("attempts-box").hidden = !errors.length;
    }

    function state(job) {
      badge(String(job.state).replace("_", " "), job.state);
      setTime(byId("started"), job.started_at);
      setTime(byId("ended"), job.ended_at);
      started = job.started_at;
      if (job.done) {
        byId("duration-label").textContent = "Duration";
        byId("duration").textContent = duration(job.started_at, job.ended_at) || "\u2014";
      } else {
        tick();
      }
      progress(job.progress);
      attempts(job);
      showText("job-notice", "job-notice", job.notice);
      byId("cancel-note").hidden = !job.cancel_requested || !!job.done;
      byId("cancel").hidden = !!job.done;
      if (byId("rerun")) { byId("rerun").hidden = !job.done; }
      if (finite(job.cancel_requested_at)) {
        byId("cancel-dt").hidden = byId("cancel-info").hidden = false;
        setTime(byId("cancel-at"), job.cancel_requested_at);
        byId("cancel-how").textContent = HOW[job.cancelled_how]
          ? " \u00b7 " + HOW[job.cancelled_how] : "";
      }
      showText("result-box", "result", job.result);
      showText("error-box", "error", job.error);
      if (job.done) {
        done = true;
        box.setAttribute("data-done", "true");
        if (follow) { follow.parentNode.hidden = true; }
      }
    }

    var banner = byId("lost");
    function say(message) {
      banner.textContent = message || "";
      banner.hidden = !message;
    }

    // The job is gone for good (404) or out of reach (403): say so, offer no
    // cancel, stop polling. A 404's message says when the job store was
    // restarted after its process was lost (its jobs went with it).
    var RESTARTED = "the job store was restarted";
    function lost(status, message) {
      done = true;
      byId("cancel").hidden = true;
      if (byId("rerun")) { byId("rerun").hidden = true; }
      if (follow) { follow.parentNode.hidden = true; }
      if (status === 404) {
        badge("lost", "lost");
        var at = typeof message === "string" ? message.indexOf(RESTARTED) : -1;
        say("This job is no longer on the server: it was dropped (finished jobs are"
            + " kept for a limited time and number) or the server restarted."
            + (at < 0 ? "" : " The j" + message.slice(at + 5) + ".")
            + " The output below is what this page last received.");
      } else {
        badge("no access", "lost");
        say("You may no longer see this job (403). The output below is what this"
            + " page last received.");
      }
    }

    var delay = 500;   // between polls: 0.5 s after news, up to 2 s when quiet
    var failures = 0;  // polls failed in a row: wait 1, 2, 4 ... 30 s
    var etag = null;

    // The server cannot be reached or is busy: the state is unknown meanwhile.
    function trouble(message, seconds) {
      failures += 1;
      var wait = seconds || Math.min(30, Math.pow(2, failures - 1));
      badge("unknown", "lost");
      byId("cancel").hidden = true;
      say(message + " Retrying in " + wait + " s\u2026");
      setTimeout(poll, wait * 1000);
    }

    function poll() {
      var headers = { "Accept": "application/json" };
      if (etag) { headers["If-None-Match"] = etag; }
      fetch(api + "?since=" + next, {
        headers: headers, cache: "no-store", credentials: "same-origin"
      }).then(function (response) {
        if (response.status === 304) {
          failures = 0;
          delay = Math.min(delay * 1.5, 2000);
          setTimeout(poll, delay);
          return null;
        }
        if (response.status === 404 || response.status === 403) {
          var status = response.status;
          return response.json().then(function (body) {
            lost(status, body && body.message);
          }, function () { lost(status); });
        }
        if (!response.ok) {
          var after = parseInt(response.headers.get("Retry-After"), 10);
          trouble(response.status === 503
            ? "The server is busy or cannot reach its job store (503)."
            : "The server answered " + response.status + ".",
            after > 0 ? Math.min(after, 300) : 0);
          return null;
        }
        etag = response.headers.get("ETag");
        return response.json().then(function (job) {
          if (failures) { say(""); }
          failures = 0;
          if (finite(job.now)) { skew = job.now - Date.now() / 1000; }
          feed(job.output);
          if (finite(job.next)) { next = job.next; }
          state(job);
          delay = job.output ? 500 : Math.min(delay * 1.5, 2000);
          if (!done) { setTimeout(poll, delay); }
        });
      }).catch(function () {
        trouble("The connection to the server is lost.", 0);
      });
    }

    if (follow) {
      out.addEventListener("scroll", function () { follow.checked = atBottom(); });
      follow.addEventListener("change", function () {
        if (follow.checked) { out.scrollTop = out.scrollHeight; }
      });
    }
    var wanted = /^#L([0-9]+)$/.exec(window.location.hash);
    if (wanted && parseInt(wanted[1], 10) < first && earlier && first > 1) {
      // A link to a line the server did not draw: load it, then go there.
      if (follow) { follow.checked = false; }
      loadEarlier().then(function () {
        var hash = window.location.hash;
        var line = document.querySelector(hash);
        if (!line) { return; }
        // Go to it again, now that it exists, so that it is the :target.
        history.replaceState(null, "", window.location.pathname + window.location.search);
        window.location.replace(hash);
        line.scrollIntoView({ block: "center" });
      });
    } else if (wanted && document.querySelector(window.location.hash)) {
      if (follow) { follow.checked = false; }  // the reader came for that line
      document.querySelector(window.location.hash).scrollIntoView({ block: "center" });
    } else {
      out.scrollTop = out.scrollHeight;
    }
    if (done) { return; }
    setInterval(tick, 1000);
    setTimeout(poll, delay);
  }

  // -- the list -----------------------------------------------------------------
  function listPage(list) {
    var serverNow = parseFloat(list.getAttribute("data-now"));
    var skew = finite(serverNow) ? serverNow - Date.now() / 1000 : 0;
    var running = list.querySelectorAll("td[data-started]");
    function tick() {
      for (var i = 0; i < running.length; i++) {
        running[i].textContent = elapsed(parseFloat(running[i].getAttribute("data-started")), skew);
      }
    }
    if (running.length) { tick(); setInterval(tick, 1000); }
    if (list.getAttribute("data-active") === "true") {
      // Reload while jobs run, but never under the reader's typing.
      setInterval(function () {
        var active = document.activeElement;
        if (!active || (active.tagName !== "INPUT" && active.tagName !== "SELECT")) {
          window.location.reload();
        }
      }, 5000);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes();
    var job = document.getElementById("job");
    if (job) { jobPage(job); }
    var list = document.getElementById("jobs");
    if (list) { listPage(list); }
  });
}());
