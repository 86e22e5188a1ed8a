// rlfm labelling pages: ranking (drag and drop, or keyboard alone), ratings, yes/no questions,
// toxicity, demonstrations; time on task; submit and skip. Model outputs are only ever set as
// text by the server's escaped templates; this script never writes HTML.
"use strict";
(function () {
  const task = document.getElementById("task");
  if (!task) return;
  const kind = task.dataset.kind;
  const csrf = task.dataset.csrf;
  const assignment = task.dataset.assignment;
  const message = document.getElementById("message");
  const submitButton = document.getElementById("submit");
  const skipButton = document.getElementById("skip");
  let busy = false;

  // ---- time on task: counts only while the page is visible
  const timer = document.getElementById("timer");
  let elapsed = 0;
  let last = performance.now();
  function tick() {
    const now = performance.now();
    if (document.visibilityState === "visible") elapsed += now - last;
    last = now;
    const s = Math.floor(elapsed / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = String(s % 60).padStart(2, "0");
    timer.textContent = h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
  }
  setInterval(tick, 1000);
  document.addEventListener("visibilitychange", tick);

  function say(text, good) {
    message.textContent = text;
    message.classList.toggle("good", !!good);
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    if (!response.ok) throw new Error(data.detail || `the server answered ${response.status}`);
    return data;
  }

  async function send(url, body, done) {
    if (busy) return; // a double click sends once (and the server stores a repeat once anyway)
    busy = true;
    submitButton.disabled = skipButton.disabled = true;
    try {
      const data = await post(url, body);
      say(done, true);
      window.location.assign(data.next);
    } catch (e) {
      say(e.message);
      busy = false;
      submitButton.disabled = skipButton.disabled = false;
    }
  }

  // ---- ranking
  const list = document.getElementById("ranking");
  const ties = task.dataset.ties === "true";
  const cards = () => Array.from(list ? list.querySelectorAll("li.output") : []);
  const letter = (card) => card.getAttribute("aria-label");

  function renumber() {
    let level = 0;
    cards().forEach((card, n) => {
      if (n === 0) card.dataset.tied = "";
      const tied = card.dataset.tied === "1";
      if (n > 0 && !tied) level += 1;
      card.classList.toggle("tied", tied);
      card.querySelector(".rank-no").textContent = String(level + 1);
      const tie = card.querySelector("button.tie");
      if (tie) {
        tie.setAttribute("aria-pressed", tied ? "true" : "false");
        tie.hidden = n === 0;
      }
    });
  }

  function rate(card, value) {
    card.dataset.rating = String(value);
    card.querySelectorAll("button.rate").forEach((b) => {
      b.setAttribute("aria-pressed", b.dataset.rating === String(value) ? "true" : "false");
    });
  }

  function countFlags(card) {
    const n = card.querySelectorAll("input[data-flag]:checked").length;
    const badge = card.querySelector(".flag-count");
    badge.textContent = n ? `${n} yes` : "all no";
    badge.classList.toggle("some", n > 0);
  }

  function move(card, step) {
    const all = cards();
    const i = all.indexOf(card);
    const j = i + step;
    if (j < 0 || j >= all.length) return;
    if (step < 0) list.insertBefore(card, all[j]);
    else list.insertBefore(all[j], card);
    renumber();
    card.focus();
  }

  function rankingPayload() {
    const groups = [];
    cards().forEach((card, n) => {
      const pos = Number(card.dataset.position);
      if (n > 0 && card.dataset.tied === "1") groups[groups.length - 1].push(pos);
      else groups.push([pos]);
    });
    const k = cards().length;
    const ratings = new Array(k);
    const flags = new Array(k);
    for (const card of cards()) {
      const pos = Number(card.dataset.position);
      if (!card.dataset.rating) {
        card.focus();
        throw new Error(`Rate ${letter(card)} from 1 to 7 before submitting.`);
      }
      ratings[pos] = Number(card.dataset.rating);
      const f = {};
      card.querySelectorAll("input[data-flag]").forEach((box) => { f[box.dataset.flag] = box.checked; });
      flags[pos] = f;
    }
    return { ranking: groups.map((g) => (g.length === 1 ? g[0] : g)), ratings, flags };
  }

  if (list) {
    let dragged = null;
    for (const card of cards()) {
      card.querySelectorAll("button.rate").forEach((b) => {
        b.addEventListener("click", () => rate(card, Number(b.dataset.rating)));
      });
      card.querySelectorAll("input[data-flag]").forEach((box) => {
        box.addEventListener("change", () => countFlags(card));
      });
      const tie = card.querySelector("button.tie");
      if (tie) {
        tie.addEventListener("click", () => {
          card.dataset.tied = card.dataset.tied === "1" ? "" : "1";
          renumber();
        });
      }
      card.addEventListener("dragstart", (e) => {
        dragged = card;
        card.classList.add("dragging");
        e.dataTransfer.effectAllowed = "move";
        e.dataTransfer.setData("text/plain", card.dataset.position);
      });
      card.addEventListener("dragend", () => {
        card.classList.remove("dragging");
        cards().forEach((c) => c.classList.remove("drop-before", "drop-after"));
        dragged = null;
      });
      card.addEventListener("dragover", (e) => {
        if (!dragged || dragged === card) return;
        e.preventDefault();
        const box = card.getBoundingClientRect();
        const before = e.clientY < box.top + box.height / 2;
        card.classList.toggle("drop-before", before);
        card.classList.toggle("drop-after", !before);
      });
      card.addEventListener("dragleave", () => card.classList.remove("drop-before", "drop-after"));
      card.addEventListener("drop", (e) => {
        e.preventDefault();
        if (!dragged || dragged === card) return;
        const box = card.getBoundingClientRect();
        const before = e.clientY < box.top + box.height / 2;
        list.insertBefore(dragged, before ? card : card.nextSibling);
        card.classList.remove("drop-before", "drop-after");
        renumber();
        dragged.focus();
      });
    }
    renumber();
    const first = cards()[0];
    if (first) first.focus();
  }

  // ---- toxicity and demonstrations
  function toxicityPayload() {
    const picked = (root, name) => {
      const box = root.querySelector(`input[name="${name}"]:checked`);
      return box ? Number(box.value) : null;
    };
    const input = picked(document, "input_toxicity");
    if (input === null) throw new Error("Rate the toxicity of the input.");
    const panels = Array.from(document.querySelectorAll(".panel.output"));
    const outputs = new Array(panels.length);
    for (const panel of panels) {
      const pos = Number(panel.dataset.position);
      const o = {
        toxicity: picked(panel, `tox-${pos}`),
        relative_toxicity: picked(panel, `rel-${pos}`),
        continuity: picked(panel, `cont-${pos}`),
      };
      if (Object.values(o).some((v) => v === null)) {
        throw new Error(`Answer all three questions for ${panel.querySelector("h2").textContent}.`);
      }
      outputs[pos] = o;
    }
    return { input_toxicity: input, outputs };
  }

  function payload() {
    let body;
    if (kind === "rank") body = rankingPayload();
    else if (kind === "toxicity") body = toxicityPayload();
    else {
      const text = document.getElementById("demonstration").value;
      if (!text.trim()) throw new Error("Write a reply before submitting.");
      body = { demonstration: text };
    }
    body.notes = document.getElementById("notes").value;
    tick();
    body.time_ms = Math.round(elapsed);
    return body;
  }

  function submit() {
    let body;
    try { body = payload(); } catch (e) { say(e.message); return; }
    send(`/api/assignments/${assignment}/submit`, body, "Saved.");
  }
  function skip() { send(`/api/assignments/${assignment}/skip`, {}, "Skipped."); }
  submitButton.addEventListener("click", submit);
  skipButton.addEventListener("click", skip);

  // ---- keyboard
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); return; }
    const typing = e.target.matches("textarea, input[type=text], input[type=email], input[type=password]");
    if (typing) return;
    if (e.key === "S" && e.shiftKey && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); skip(); return; }
    if (!list) return;
    const card = document.activeElement && document.activeElement.closest ? document.activeElement.closest("li.output") : null;
    const all = cards();
    const down = e.key === "ArrowDown" || e.key === "j" || e.key === "J";
    const up = e.key === "ArrowUp" || e.key === "k" || e.key === "K";
    if (up || down) {
      e.preventDefault();
      if (!card) { all[0].focus(); return; }
      if (e.shiftKey) move(card, up ? -1 : 1);
      else {
        const next = all[all.indexOf(card) + (up ? -1 : 1)];
        if (next) next.focus();
      }
      return;
    }
    if (!card || e.ctrlKey || e.metaKey || e.altKey) return;
    if (/^[1-7]$/.test(e.key)) { e.preventDefault(); rate(card, Number(e.key)); return; }
    if ((e.key === "t" || e.key === "T") && ties && all.indexOf(card) > 0) {
      e.preventDefault();
      card.dataset.tied = card.dataset.tied === "1" ? "" : "1";
      renumber();
      return;
    }
    if (e.key === "f" || e.key === "F") {
      e.preventDefault();
      const details = card.querySelector("details.flags");
      details.open = !details.open;
      if (details.open) details.querySelector("input[data-flag]").focus();
    }
  });
})();
