// oaksend's dashboard: the little JavaScript it has, served from the package (no CDN, no library).
// - [data-live]: replaced every data-every seconds by a fresh server-rendered fragment (escaped on the
//   server); polling pauses while the tab is hidden and resumes, at once, when it is shown again.
// - .copy buttons copy their data-copy text (a SessionID).
// - #select-all ticks every message on the page.
"use strict";
(function () {
  function poll(el) {
    var every = Math.max(1, parseInt(el.getAttribute("data-every") || "5", 10)) * 1000;
    var timer = null;
    function refresh() {
      timer = null;
      if (document.hidden) { return; }
      fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { el.innerHTML = html; } })
        .catch(function () { /* the next poll tries again */ })
        .then(function () { schedule(); });
    }
    function schedule() { if (timer === null && !document.hidden) { timer = setTimeout(refresh, every); } }
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { if (timer !== null) { clearTimeout(timer); timer = null; } }
      else if (timer === null) { refresh(); }
    });
    schedule();
  }
  function wire() {
    document.querySelectorAll("[data-live]").forEach(poll);
    document.querySelectorAll("button.copy").forEach(function (b) {
      b.addEventListener("click", function () {
        var text = b.getAttribute("data-copy");
        if (navigator.clipboard) {
          navigator.clipboard.writeText(text).then(function () { b.textContent = "copied"; },
                                                   function () { b.textContent = "copy failed"; });
        }
      });
    });
    var all = document.getElementById("select-all");
    if (all) {
      all.addEventListener("change", function () {
        document.querySelectorAll("input.pick").forEach(function (c) { c.checked = all.checked; });
      });
    }
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", wire); } else { wire(); }
})();
