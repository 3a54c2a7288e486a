// Caretaker dashboard: the little script it needs. Every page works without it.
"use strict";
(function () {
  // One key hides the screen when a pupil walks up (Esc, or the button); again to show it.
  var cover = document.querySelector(".privacy-cover");
  function toggleCover() {
    if (!cover) return;
    var hide = cover.hidden;
    cover.hidden = !hide;
    document.body.classList.toggle("privacy", hide);
  }
  document.addEventListener("keydown", function (e) {
    var typing = /^(INPUT|TEXTAREA|SELECT)$/.test((e.target && e.target.tagName) || "");
    if (e.key === "Escape" && (!typing || !cover.hidden)) toggleCover();
  });
  document.querySelectorAll("[data-hide-screen]").forEach(function (b) {
    b.addEventListener("click", toggleCover);
  });
  if (cover) cover.addEventListener("click", toggleCover);

  // Copy buttons: copy the text of the element they name.
  document.querySelectorAll("[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () {
      var el = document.getElementById(b.getAttribute("data-copy"));
      if (!el || !navigator.clipboard) return;
      navigator.clipboard.writeText(el.textContent.trim()).then(function () {
        b.textContent = "Copied";
      });
    });
  });

  // Forms that undo something ask first.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) e.preventDefault();
    });
  });

  // Lists that update themselves (devices arriving during enrolment).
  document.querySelectorAll("[data-poll]").forEach(function (el) {
    var url = el.getAttribute("data-poll");
    setInterval(function () {
      fetch(url, { credentials: "same-origin" }).then(function (r) {
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (html !== null && html !== el.innerHTML) el.innerHTML = html;
      }).catch(function () {});
    }, 3000);
  });
})();
