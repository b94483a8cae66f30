// The labelling page: keyboard first. Keys act on the highlighted question (↓/n next, ↑/p back);
// a choice moves on by itself; Enter submits; k skips (type the reason, Enter). Clips shown as
// frame strips play on a canvas and can be paused (Space) and stepped (←/→); m marks the frame
// where the current clip becomes unsafe, s marks it safe throughout. No inline script or style:
// everything the page needs comes in data-* attributes.
(function () {
  "use strict";
  const start = document.getElementById("next-form");
  const form = document.getElementById("label-form");
  if (!form) {
    if (start) {
      document.addEventListener("keydown", (event) => {
        if (event.key === "Enter") {
          event.preventDefault();
          start.requestSubmit();
        }
      });
    }
    return;
  }
  const questions = Array.from(form.querySelectorAll("fieldset.question"));
  const skipReason = document.getElementById("skip-reason");
  const skipped = document.getElementById("skipped");
  let current = 0;

  // ---- clips: frame strips on a canvas (and videos with a known frame count) ----------------
  const players = Array.from(document.querySelectorAll(".player")).map((element) => makePlayer(element));
  let clip = 0; // the clip the mark question acts on

  function makePlayer(element) {
    const canvas = element.querySelector("canvas.strip");
    const video = element.querySelector("video");
    const timeline = element.querySelector(".timeline");
    const label = element.querySelector(".frame");
    const player = { index: Number(element.dataset.index), frame: 0, playing: true, element };
    if (canvas) {
      const frames = Number(canvas.dataset.frames);
      const columns = Math.min(frames, Number(canvas.dataset.columns));
      const image = new Image();
      player.frames = frames;
      image.addEventListener("load", () => {
        const width = image.naturalWidth / columns;
        const height = image.naturalHeight / Math.ceil(frames / columns);
        canvas.width = width;
        canvas.height = height;
        player.draw = () => {
          const f = player.frame;
          canvas.getContext("2d").drawImage(
            image, (f % columns) * width, Math.floor(f / columns) * height, width, height, 0, 0, width, height);
          if (timeline) timeline.value = String(f);
          if (label) label.textContent = String(f);
          canvas.dataset.frame = String(f);
        };
        player.draw();
        canvas.dataset.ready = "true";
      });
      image.src = canvas.dataset.src;
      const period = 1000 / Number(canvas.dataset.fps || 10);
      setInterval(() => {
        if (player.playing && player.draw) {
          player.frame = (player.frame + 1) % frames;
          player.draw();
        }
      }, period);
      if (timeline) {
        timeline.addEventListener("input", () => {
          player.playing = false;
          player.frame = Number(timeline.value);
          if (player.draw) player.draw();
        });
      }
      player.seek = (f) => {
        player.frame = (f + frames) % frames;
        if (player.draw) player.draw();
      };
      player.toggle = () => { player.playing = !player.playing; };
      player.pause = () => { player.playing = false; };
    } else if (video) {
      const frames = Number(video.dataset.frames || 0);
      player.frames = frames;
      const step = () => (video.duration && frames ? video.duration / frames : 0.04);
      player.current = () => Math.min(frames - 1, Math.floor(video.currentTime / step()));
      video.addEventListener("timeupdate", () => { if (label) label.textContent = String(player.current()); });
      player.seek = (f) => { video.currentTime = Math.max(0, f) * step(); player.frame = Math.max(0, f); };
      player.toggle = () => { if (video.paused) video.play(); else video.pause(); };
      player.pause = () => video.pause();
    }
    return player;
  }

  function playerOf(index) {
    return players.find((p) => p.index === index);
  }

  function currentFrame(player) {
    return player.current ? player.current() : player.frame;
  }

  // ---- questions ----------------------------------------------------------------------------
  function focusQuestion(i) {
    if (!questions.length) return;
    current = Math.max(0, Math.min(questions.length - 1, i));
    questions.forEach((q, k) => q.classList.toggle("current", k === current));
    questions[current].scrollIntoView({ block: "nearest" });
  }

  function choose(name, value) {
    const input = form.querySelector(`input[name="${name}"][value="${value}"]`);
    if (input) {
      input.checked = true;
      input.dispatchEvent(new Event("change", { bubbles: true }));
      return true;
    }
    return false;
  }

  const CHOICE_KEYS = { "1": "A", "2": "B", "t": "tie", "x": "both_bad" };

  function digit(key) {
    return /^[1-8]$/.test(key) ? Number(key) - 1 : null;
  }

  function rankingOrder(list) {
    if (!list.order) list.order = [];
    return list.order;
  }

  function showRanking(fieldset) {
    const list = fieldset.querySelector("ol.ranking");
    const order = rankingOrder(list); // [[candidate, tiedWithPrevious], ...]
    const items = Array.from(list.querySelectorAll("li"));
    let rank = 0;
    const ranks = new Map();
    order.forEach(([index, tied], position) => {
      if (!tied || position === 0) rank = position + 1;
      ranks.set(index, rank);
    });
    const complete = order.length === items.length;
    items.forEach((li) => {
      const index = Number(li.dataset.index);
      li.querySelector("input").value = complete ? String(ranks.get(index)) : "";
      li.querySelector(".rank").textContent = ranks.has(index) ? `#${ranks.get(index)}` : "";
    });
    // show them in the chosen order (the unranked ones after)
    const placed = order.map(([index]) => items.find((li) => Number(li.dataset.index) === index));
    const rest = items.filter((li) => !placed.includes(li));
    placed.concat(rest).forEach((li) => list.appendChild(li));
  }

  function ranking(fieldset, key) {
    const list = fieldset.querySelector("ol.ranking");
    const order = rankingOrder(list);
    const n = list.querySelectorAll("li").length;
    if (key === "Backspace") {
      order.pop();
    } else if (key === "=" && list.dataset.ties === "true") {
      list.tieNext = true;
      return true;
    } else {
      const index = digit(key);
      if (index === null || index >= n || order.some(([i]) => i === index)) return false;
      order.push([index, Boolean(list.tieNext)]);
      list.tieNext = false;
    }
    showRanking(fieldset);
    if (order.length === n) focusQuestion(current + 1);
    return true;
  }

  function setupDrag(fieldset) {
    const list = fieldset.querySelector("ol.ranking");
    if (!list) return;
    let dragged = null;
    list.addEventListener("dragstart", (event) => { dragged = event.target.closest("li"); });
    list.addEventListener("dragover", (event) => event.preventDefault());
    list.addEventListener("drop", (event) => {
      event.preventDefault();
      const target = event.target.closest("li");
      if (!dragged || !target || dragged === target) return;
      list.insertBefore(dragged, target);
      list.order = Array.from(list.querySelectorAll("li")).map((li) => [Number(li.dataset.index), false]);
      showRanking(fieldset);
    });
  }

  function rating(fieldset, key) {
    const selects = Array.from(fieldset.querySelectorAll("select"));
    if (fieldset.cell === undefined) fieldset.cell = 0;
    if (key === "Backspace") {
      fieldset.cell = Math.max(0, fieldset.cell - 1);
      selects[fieldset.cell].value = "";
    } else {
      const select = selects[fieldset.cell];
      if (!select || !/^[0-9]$/.test(key)) return false;
      if (!Array.from(select.options).some((o) => o.value === key)) return false;
      select.value = key;
      fieldset.cell += 1;
    }
    selects.forEach((s, i) => s.classList.toggle("current", i === fieldset.cell));
    if (fieldset.cell >= selects.length) focusQuestion(current + 1);
    return true;
  }

  function isSafe(fieldset, key) {
    const index = digit(key);
    if (index === null) return false;
    const name = `q.${fieldset.dataset.name}.${index}.safe`;
    const now = form.querySelector(`input[name="${name}"]:checked`);
    return choose(name, now && now.value === "safe" ? "unsafe" : "safe");
  }

  function correction(fieldset, key) {
    const editor = fieldset.querySelector("textarea");
    if (key === "c") {
      editor.focus();
      return true;
    }
    const index = digit(key);
    if (index === null) return false;
    return choose(`q.${fieldset.dataset.name}.candidate`, String.fromCharCode(65 + index));
  }

  function mark(fieldset, key) {
    const index = digit(key);
    if (index !== null) {
      if (!playerOf(index)) return false;
      clip = index;
      fieldset.querySelectorAll(".mark-row").forEach((row) =>
        row.classList.toggle("current", Number(row.dataset.index) === clip));
      return true;
    }
    const player = playerOf(clip);
    if (!player) return false;
    const row = fieldset.querySelector(`.mark-row[data-index="${clip}"]`);
    const input = row.querySelector("input");
    const shown = row.querySelector(".mark-value");
    if (key === " ") player.toggle();
    else if (key === "ArrowLeft" || key === "ArrowRight") {
      player.pause();
      player.seek(currentFrame(player) + (key === "ArrowLeft" ? -1 : 1));
    } else if (key === "m") {
      input.value = String(currentFrame(player));
      shown.textContent = `unsafe from frame ${input.value}`;
    } else if (key === "s") {
      input.value = "safe";
      shown.textContent = "safe throughout";
    } else return false;
    return true;
  }

  const HANDLERS = {
    pairwise: (fieldset, key) => {
      const done = key in CHOICE_KEYS && choose(`q.${fieldset.dataset.name}`, CHOICE_KEYS[key]);
      if (done) focusQuestion(current + 1);
      return done;
    },
    is_safe: isSafe,
    ranking: ranking,
    rating: rating,
    correction: correction,
    mark: mark,
    text: (fieldset, key) => {
      if (key !== "c") return false;
      fieldset.querySelector("textarea").focus();
      return true;
    },
  };
  HANDLERS.safer = HANDLERS.pairwise;

  questions.forEach((fieldset) => {
    fieldset.addEventListener("click", () => focusQuestion(questions.indexOf(fieldset)));
    if (fieldset.dataset.kind === "ranking") setupDrag(fieldset);
    if (fieldset.dataset.kind === "correction") {
      const editor = fieldset.querySelector("textarea");
      const original = fieldset.querySelector('input[type="hidden"]');
      fieldset.querySelectorAll('input[type="radio"]').forEach((radio) =>
        radio.addEventListener("change", () => {
          if (editor.value === original.value) editor.value = radio.dataset.text;
          original.value = radio.dataset.text;
        }));
    }
  });

  function submit() {
    if (typeof form.requestSubmit === "function") form.requestSubmit();
    else form.submit();
  }

  skipReason.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      skipped.value = skipReason.value.trim() ? "1" : "0";
      submit();
    }
  });
  document.getElementById("skip").addEventListener("click", () => {
    skipped.value = "1";
    submit();
  });
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target.matches("textarea, input[type=text], input:not([type]), select")) {
      if (event.key === "Escape") target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const fieldset = questions[current];
    const handler = fieldset && HANDLERS[fieldset.dataset.kind];
    let handled = handler ? handler(fieldset, event.key) : false;
    if (!handled) {
      handled = true;
      if (event.key === "ArrowDown" || event.key === "n") focusQuestion(current + 1);
      else if (event.key === "ArrowUp" || event.key === "p") focusQuestion(current - 1);
      else if (event.key === "k") skipReason.focus();
      else if (event.key === "Enter") submit();
      else handled = false;
    }
    if (handled) event.preventDefault();
  });
  focusQuestion(0);
})();
