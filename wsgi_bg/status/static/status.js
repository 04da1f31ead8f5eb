// wsgi_bg status pages: live output and state of a job, local times.
//
// Job text is only ever inserted with textContent / appendData (never as
// HTML). New output comes from the event stream (EventSource), or, where
// that is unavailable or fails, from polling the JSON API with ?since=N.
// Output is drawn as a terminal would: "\n" ends a line; after a lone "\r"
// the next text replaces the line (progress bars), as the server renders it.
(function () {
  "use strict";

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

  function jobPage(box) {
    var api = box.getAttribute("data-api");
    var eventsUrl = box.getAttribute("data-events");
    var next = parseInt(box.getAttribute("data-next"), 10) || 0;
    var done = box.getAttribute("data-done") === "true";
    var out = document.getElementById("output");
    var lineNode = document.getElementById("output-line");
    var doneNode = document.createTextNode("");
    out.insertBefore(doneNode, lineNode);
    var line = lineNode.textContent;
    var pendingCR = out.getAttribute("data-cr") === "1";
    var byId = function (id) { return document.getElementById(id); };

    function atBottom() {
      return out.scrollHeight - out.scrollTop - out.clientHeight < 8;
    }

    function feed(text) {
      if (!text) { return; }
      var stick = atBottom();
      var finished = "";
      var parts = text.split(/(\r|\n)/);
      for (var i = 0; i < parts.length; i++) {
        var p = parts[i];
        if (p === "\n") {
          finished += line + "\n";
          line = "";
          pendingCR = false;
        } else if (p === "\r") {
          pendingCR = true;
        } else if (p) {
          if (pendingCR) { line = ""; pendingCR = false; }
          line += p;
        }
      }
      if (finished) { doneNode.appendData(finished); }
      lineNode.textContent = line;
      if (stick) { out.scrollTop = out.scrollHeight; }
    }

    function output(data) {
      feed(data.text);
      if (finite(data.next)) { next = data.next; }
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

    function state(job) {
      var badge = byId("state");
      badge.textContent = String(job.state).replace("_", " ");
      badge.className = "badge state-" + job.state;
      setTime(byId("started"), job.started_at);
      setTime(byId("ended"), job.ended_at);
      byId("duration").textContent = duration(job.started_at, job.ended_at);
      progress(job.progress);
      byId("cancel-note").hidden = !job.cancel_requested;
      byId("cancel").hidden = !!job.done;
      showText("result-box", "result", job.result);
      showText("error-box", "error", job.error);
      if (job.done) {
        done = true;
        box.setAttribute("data-done", "true");
      }
    }

    function poll() {
      fetch(api + "?since=" + next, {
        headers: { "Accept": "application/json" },
        cache: "no-store",
        credentials: "same-origin"
      }).then(function (response) {
        if (response.status === 403 || response.status === 404) { return null; }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      }).then(function (job) {
        if (!job) { return; }
        output({ text: job.output, next: job.next });
        state(job);
        if (!done) { setTimeout(poll, 1000); }
      }).catch(function () {
        setTimeout(poll, 5000);
      });
    }

    function stream() {
      var opened = false;
      var source = new EventSource(eventsUrl + "?since=" + next);
      source.addEventListener("open", function () { opened = true; });
      source.addEventListener("output", function (e) { output(JSON.parse(e.data)); });
      source.addEventListener("state", function (e) {
        var job = JSON.parse(e.data);
        state(job);
        if (job.done) { source.close(); }
      });
      source.addEventListener("gone", function () { source.close(); });
      source.addEventListener("error", function () {
        if (done) { source.close(); return; }
        // Never connected, or refused: poll instead. Otherwise the browser
        // reconnects by itself, sending the last offset as Last-Event-ID.
        if (!opened || source.readyState === EventSource.CLOSED) {
          source.close();
          poll();
        }
      });
    }

    out.scrollTop = out.scrollHeight;
    if (done) { return; }
    if (window.EventSource) { stream(); } else { poll(); }
  }

  function listPage(list) {
    if (list.getAttribute("data-active") === "true") {
      setTimeout(function () { window.location.reload(); }, 5000);
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
