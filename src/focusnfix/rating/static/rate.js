// focusnfix rate: keyboard shortcuts, answer submission with retries (same submission id, so a retry
// never duplicates), the problem-map toggle, and the "continue as" link on the start page.
(function () {
  "use strict";
  var STORE = "focusnfix-rater";

  function remember(el) {
    if (!el || !el.dataset.token) return;
    try { localStorage.setItem(STORE, JSON.stringify({token: el.dataset.token, name: el.dataset.name})); } catch (e) { /* private mode */ }
  }

  function startPage() {
    var box = document.getElementById("resume");
    if (!box) return;
    var saved = null;
    try { saved = JSON.parse(localStorage.getItem(STORE) || "null"); } catch (e) { saved = null; }
    if (!saved || typeof saved.token !== "string" || !/^[A-Za-z0-9_-]{8,64}$/.test(saved.token)) return;
    var link = document.getElementById("resume-link");
    link.textContent = String(saved.name || "your last session");  // text, never HTML
    link.href = "/r/" + saved.token;
    box.hidden = false;
  }

  function taskPage(form) {
    var questions = Array.prototype.slice.call(form.querySelectorAll("fieldset.q"));
    var message = document.getElementById("message");
    var submitButton = document.getElementById("submit");
    var backButton = document.getElementById("back");
    var active = 0, sending = false;

    function answerOf(fs) {
      var checked = fs.querySelector("input:checked");
      return checked ? checked.value : null;
    }
    function setActive(i) {
      active = Math.max(0, Math.min(questions.length - 1, i));
      questions.forEach(function (fs, k) { fs.classList.toggle("active", k === active); });
    }
    function nextOpen(from) {
      for (var k = 1; k <= questions.length; k++) {
        var i = (from + k) % questions.length;
        if (answerOf(questions[i]) === null) return i;
      }
      return -1;
    }
    function show(text) {
      message.textContent = text;
      message.hidden = !text;
    }
    function back() {
      if (form.dataset.back && !sending) window.location.assign(form.dataset.back);
    }

    var firstOpen = nextOpen(questions.length - 1);
    setActive(firstOpen < 0 ? 0 : firstOpen);

    form.addEventListener("change", function (e) {
      var fs = e.target.closest("fieldset.q");
      var i = questions.indexOf(fs);
      var n = nextOpen(i);
      setActive(n < 0 ? i : n);
      show("");
    });
    questions.forEach(function (fs, i) {
      fs.addEventListener("click", function () { if (answerOf(fs) === null) setActive(i); });
    });

    function send(body, attempt) {
      return fetch(form.dataset.api, {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
        credentials: "same-origin", cache: "no-store"
      }).then(function (resp) {
        if (resp.status >= 500 && attempt < 5) return retry(body, attempt);
        return resp.json().catch(function () { return {}; }).then(function (data) { return {status: resp.status, data: data}; });
      }, function () {
        if (attempt < 5) return retry(body, attempt);
        return {status: 0, data: {error: "the server does not answer"}};
      });
    }
    function retry(body, attempt) {
      show("Saving… (retrying)");
      return new Promise(function (ok) { setTimeout(ok, 400 * Math.pow(2, attempt)); }).then(function () { return send(body, attempt + 1); });
    }

    function submit() {
      if (sending) return;
      var answers = {}, missing = -1;
      questions.forEach(function (fs, i) {
        var v = answerOf(fs);
        if (v === null && missing < 0) missing = i;
        answers[fs.dataset.key] = v;
      });
      if (missing >= 0) {
        setActive(missing);
        show("Please answer question " + (missing + 1) + ".");
        return;
      }
      sending = true;
      submitButton.disabled = true;
      var body = {task: form.dataset.task, submission: form.dataset.nonce, answers: answers,
                  revise: form.dataset.revise === "true"};
      send(body, 0).then(function (r) {
        if (r.status === 200) {
          remember(form);
          window.location.replace(r.data.next);
          return;
        }
        sending = false;
        submitButton.disabled = false;
        if (r.status === 409) {
          show("This pair was already answered (perhaps in another tab). Loading the next one…");
          setTimeout(function () { window.location.replace(window.location.pathname); }, 1200);
        } else if (r.status === 0) {
          show("Not saved: the server does not answer. Press Enter to try again.");
        } else {
          show("Not saved: " + ((r.data && r.data.error) || ("error " + r.status)));
        }
      });
    }

    form.addEventListener("submit", function (e) { e.preventDefault(); submit(); });
    if (backButton) backButton.addEventListener("click", back);

    // problem map: cycle the original image through its heatmap and mask overlay
    var original = document.querySelector("img[data-maps]");
    var maps = original ? [original.dataset.src].concat(original.dataset.maps.split(" ").filter(Boolean)) : [];
    var mapIndex = 0;
    function toggleMap() {
      if (maps.length < 2) return;
      mapIndex = (mapIndex + 1) % maps.length;
      original.src = maps[mapIndex];
      var note = original.parentNode.querySelector(".map-note");
      if (note) note.hidden = mapIndex === 0;
    }
    var toggle = document.getElementById("toggle-map");
    if (toggle) toggle.addEventListener("click", toggleMap);

    document.querySelectorAll(".pair img").forEach(function (img) {
      function crisp() { if (img.naturalWidth && img.naturalWidth < 256) img.classList.add("pixelated"); }
      if (img.complete) crisp(); else img.addEventListener("load", crisp);
    });

    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
      var tag = (e.target && e.target.tagName) || "";
      if (tag === "INPUT" && e.target.type === "text" || tag === "TEXTAREA") return;
      if (e.key === "Enter" && (tag === "BUTTON" || tag === "A")) return;  // the focused control's own action
      if (/^[1-9]$/.test(e.key)) {
        var inputs = questions[active].querySelectorAll("input[type=radio]");
        var k = Number(e.key) - 1;
        if (k < inputs.length) {
          inputs[k].checked = true;
          inputs[k].dispatchEvent(new Event("change", {bubbles: true}));
        }
        e.preventDefault();
      } else if (e.key === "Enter") {
        e.preventDefault();
        submit();
      } else if (e.key === "Backspace") {
        e.preventDefault();
        back();
      } else if (e.key === "h" || e.key === "H") {
        toggleMap();
      } else if (e.key === "ArrowDown") {
        e.preventDefault();
        setActive(active + 1);
      } else if (e.key === "ArrowUp") {
        e.preventDefault();
        setActive(active - 1);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    startPage();
    var form = document.getElementById("answer");
    if (form) { remember(form); taskPage(form); form.dataset.ready = "true"; }
    remember(document.getElementById("done"));
  });
})();
