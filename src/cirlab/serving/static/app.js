// cirlab web page: pick a reference, describe a change, click a result to refine. No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { reference: null, turns: [], galleryOffset: 0, galleryTotal: 0, busy: false };
const PAGE = 48;

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function say(text, isError = false) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("error", isError);
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("the server cannot be reached");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `request failed (${response.status})`);
  return body;
}

function referenceThumb(reference) {
  return reference.kind === "id" ? `/api/images/${encodeURIComponent(reference.id)}?thumb=true` : reference.url;
}

function setReference(reference, newSession) {
  if (state.reference && state.reference.kind === "upload" && state.reference !== reference && newSession) {
    URL.revokeObjectURL(state.reference.url);
  }
  state.reference = reference;
  if (newSession) state.turns = [];
  const box = $("reference");
  box.classList.remove("empty");
  box.replaceChildren(el("img", {
    src: reference.kind === "id" ? `/api/images/${encodeURIComponent(reference.id)}` : reference.url,
    alt: reference.kind === "id" ? `reference ${reference.id}` : "uploaded reference",
    "data-reference": reference.kind === "id" ? reference.id : "upload",
  }));
  box.dataset.reference = reference.kind === "id" ? reference.id : "upload";
  const caption = reference.kind === "id" ? reference.id : `upload: ${reference.name}`;
  let note = box.nextElementSibling;
  if (!note || !note.classList.contains("reference-caption")) {
    note = el("p", { class: "reference-caption" });
    box.after(note);
  }
  note.textContent = caption;
  renderTrail();
  $("text").focus();
}

function renderTrail() {
  const trail = $("trail");
  trail.replaceChildren(...state.turns.map((turn, i) => el("li", { class: "turn", "data-turn": String(i + 1) }, [
    el("img", { src: turn.referenceThumb, alt: "" }),
    el("span", { text: `“${turn.text}”` }),
    el("span", { class: "arrow", text: "→" }),
    turn.chosen
      ? el("img", { src: `/api/images/${encodeURIComponent(turn.chosen)}?thumb=true`, alt: turn.chosen, title: turn.chosen })
      : el("span", { class: "pending", text: "?", title: "click a result to continue" }),
  ])));
  $("restart").hidden = state.turns.length === 0;
}

function renderResults(results, title) {
  $("results-title").textContent = title;
  $("results").replaceChildren(...results.map((hit) => el("button", {
    type: "button", class: "card result", "data-id": hit.id, title: `use ${hit.id} as the next reference`,
    onclick: () => chooseResult(hit.id),
  }, [
    el("img", { src: hit.thumb, alt: hit.id, loading: "lazy" }),
    el("span", { class: "meta" }, [el("span", { class: "rank", text: `#${hit.rank}` }),
                                   el("span", { class: "score", text: hit.score.toFixed(3) })]),
    el("span", { class: "id", text: hit.id }),
  ])));
}

function chooseResult(id) {
  const last = state.turns[state.turns.length - 1];
  if (last) last.chosen = id;
  setReference({ kind: "id", id }, false);
  $("text").value = "";
  say(`${id} is the new reference: describe a further change.`);
}

async function search(event) {
  event.preventDefault();
  if (state.busy) return;
  const text = $("text").value.trim();
  if (!state.reference) return say("Pick a reference image first.", true);
  if (!text) return say("Describe the change you want.", true);
  const form = new FormData();
  form.append("text", text);
  form.append("k", $("k").value);
  if (state.reference.kind === "id") form.append("id", state.reference.id);
  else form.append("image", state.reference.file, state.reference.name);
  state.busy = true;
  $("search").disabled = true;
  say("Searching…");
  try {
    const body = await api("/api/search", { method: "POST", body: form });
    state.turns.push({ referenceThumb: referenceThumb(state.reference), text, chosen: null });
    renderTrail();
    renderResults(body.results, `Results for “${text}”`);
    say(`${body.results.length} results in ${Math.round(body.took_ms)} ms.`);
  } catch (err) {
    say(err.message, true);
  } finally {
    state.busy = false;
    $("search").disabled = false;
  }
}

async function loadGallery(offset) {
  const body = await api(`/api/gallery?offset=${offset}&limit=${PAGE}`);
  state.galleryOffset = body.offset;
  state.galleryTotal = body.total;
  $("gallery-range").textContent =
    `${body.total ? body.offset + 1 : 0}–${body.offset + body.items.length} of ${body.total}`;
  $("gallery-prev").disabled = body.offset === 0;
  $("gallery-next").disabled = body.offset + PAGE >= body.total;
  $("gallery-grid").replaceChildren(...body.items.map((item) => el("button", {
    type: "button", class: "card gallery-item", "data-id": item.id, title: item.id,
    onclick: () => { $("gallery").close(); setReference({ kind: "id", id: item.id }, true); say(`Reference: ${item.id}.`); },
  }, [el("img", { src: item.thumb, alt: item.id, loading: "lazy" })])));
}

async function openGallery() {
  try {
    await loadGallery(state.galleryOffset);
    $("gallery").showModal();
  } catch (err) {
    say(err.message, true);
  }
}

function upload(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  setReference({ kind: "upload", file, name: file.name, url: URL.createObjectURL(file) }, true);
  say(`Reference: ${file.name} (uploaded). Describe the change.`);
}

async function init() {
  $("search-form").addEventListener("submit", search);
  $("browse").addEventListener("click", openGallery);
  $("upload").addEventListener("change", upload);
  $("restart").addEventListener("click", () => { state.turns = []; renderTrail(); renderResults([], "Results"); });
  $("gallery-close").addEventListener("click", () => $("gallery").close());
  $("gallery-prev").addEventListener("click", () => loadGallery(Math.max(0, state.galleryOffset - PAGE)));
  $("gallery-next").addEventListener("click", () => loadGallery(state.galleryOffset + PAGE));
  $("gallery-shuffle").addEventListener("click", () =>
    loadGallery(Math.floor(Math.random() * Math.max(1, Math.ceil(state.galleryTotal / PAGE))) * PAGE));
  renderTrail();
  try {
    const health = await api("/api/health");
    $("text").maxLength = health.limits.max_text_chars;
    $("status").textContent = `${health.images} images · ${health.model} · ${health.kind} search`;
  } catch (err) {
    $("status").textContent = "server unavailable";
    say(err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", init);
