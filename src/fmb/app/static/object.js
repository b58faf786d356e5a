"use strict";
// The object page: images, spectrum, scores and neighbours of one object, and its label, all by keyboard.

const objectId = window.location.pathname.split("/").pop(); // the server answered this page: a known id
const params = new URLSearchParams(window.location.search);
const DEFAULT_TAGS = {a: "artefact", l: "lens", g: "AGN", m: "merger"};
const NEIGHBOURS_AFTER_MS = 300; // a user paging with "n" has left by then; one looking has not yet scrolled
let label = null; // the object's label as the server last returned it
let tagKeys = {}; // key -> tag, shown on the tag buttons
let tagMode = false; // after "t": the next key chooses a tag
const place = {ranking: null, position: null, pageSize: Number(params.get("page_size") || PAGE_SIZE)};
const pages = new Map(); // page number -> items, of the list this object is shown in
const FIRST_SCREEN = { // the image settings the server's page starts with (before any control changes them)
  panels: document.getElementById("panels").dataset.query,
  spectrum: new URL(document.getElementById("spectrum").src).search,
};

// -- the list this object belongs to: its position, the previous and the next object ----------------
async function listPage(page) {
  if (!pages.has(page)) {
    const query = listQuery(params);
    query.set("page", page);
    query.set("page_size", place.pageSize);
    const answer = await api(`/api/list?${query}`);
    place.ranking = answer.ranking;
    pages.set(page, answer.items);
  }
  return pages.get(page);
}

async function locate() {
  if (params.get("pos") !== null) {
    place.position = Number(params.get("pos"));
    await listPage(Math.floor(place.position / place.pageSize));
  } else {
    const query = listQuery(params);
    query.set("find", objectId);
    query.set("page_size", place.pageSize);
    try {
      const answer = await api(`/api/list?${query}`);
      place.ranking = answer.ranking;
      place.position = answer.items.find((item) => String(item.object_id) === objectId).position;
    } catch (error) {
      place.position = null; // not in this list (filtered out, or unscored): no previous or next
    }
  }
  document.getElementById("position").textContent =
    place.position === null ? "not in the current list" : `#${place.position + 1} in ${place.ranking}`;
}

/** The first screen's image URLs of `id` at the settings the server's page starts with (this page's own). */
function firstScreenUrls(id) {
  const panels = [...document.querySelectorAll("#panels img")].length - 1; // the bands, beside the RGB
  return [`/img/${id}/rgb.png?${FIRST_SCREEN.panels}`,
          ...Array.from({length: Math.max(panels, 0)}, (_, band) => `/img/${id}/band/${band}.png?${FIRST_SCREEN.panels}`),
          `/img/${id}/spectrum.png${FIRST_SCREEN.spectrum}`];
}

/** Once this object's own images are in, the next object's page and images are asked for: the
 * browser keeps them (a prefetch, five minutes), so "next" paints from its cache, and the server
 * draws them if it had not yet. */
async function prefetchNext() {
  if (place.position === null) return;
  const position = place.position + 1;
  const next = (await listPage(Math.floor(position / place.pageSize)))[position % place.pageSize];
  if (!next) return;
  const page = el("link", {rel: "prefetch", as: "document", href: objectUrl(next.object_id, params, position)});
  document.head.append(page, ...firstScreenUrls(next.object_id).map((href) => el("link", {rel: "prefetch", href})));
}

async function go(delta) {
  if (place.position === null) return;
  const position = place.position + delta;
  if (position < 0) {
    showStatus("this is the first object of the list");
    return;
  }
  try {
    const items = await listPage(Math.floor(position / place.pageSize));
    const item = items[position % place.pageSize];
    if (!item) throw new Error("this is the last object of the list");
    window.location.href = objectUrl(item.object_id, params, position);
  } catch (error) {
    showStatus(error.message, error.status !== 404);
  }
}

// -- the label ------------------------------------------------------------------------------------
async function saveLabel(change) {
  const current = label || {interest: null, tags: [], note: ""};
  const body = {object_id: objectId, interest: current.interest, tags: current.tags, note: current.note,
                user: currentUser(), ranking: place.ranking,
                rank: place.position === null ? null : place.position + 1, ...change};
  try {
    const saved = await postJson("/api/labels", body);
    label = saved.label; // the object's label as the log now holds it (a label is the whole state)
    renderLabel();
    renderNote();
    showStatus(`saved (event ${saved.event}): ${labelText(label) || "a note"}`);
  } catch (error) {
    showStatus(error.message, true);
  }
}

function toggleTag(tag) {
  const tags = label ? label.tags : [];
  saveLabel({tags: tags.includes(tag) ? tags.filter((other) => other !== tag) : [...tags, tag]});
}

async function undo() {
  try {
    const answer = await postJson("/api/undo", {user: currentUser()});
    if (answer.event === null) {
      showStatus("nothing to undo");
      return;
    }
    if (String(answer.object_id) === objectId) {
      label = answer.label;
      renderLabel();
      renderNote();
    }
    showStatus(`undone: your last label, of object ${answer.object_id}`);
  } catch (error) {
    showStatus(error.message, true);
  }
}

function assignTagKeys(tagsInUse) {
  tagKeys = {...DEFAULT_TAGS};
  const known = new Set(Object.values(tagKeys));
  const free = [..."bcdefhijknopqrsuvwxyz"].filter((key) => !(key in tagKeys));
  for (const tag of [...tagsInUse, ...(label ? label.tags : [])]) {
    if (!known.has(tag) && free.length) {
      tagKeys[free.shift()] = tag;
      known.add(tag);
    }
  }
}

function renderLabel() {
  const interest = label ? label.interest : null;
  document.getElementById("interest-buttons").replaceChildren(...[0, 1, 2, 3, 4, 5].map((value) =>
    el("button", {type: "button", class: value === interest ? "chosen" : null, "aria-pressed": String(value === interest),
                  title: `interest ${value} (key ${value})`, text: String(value),
                  onclick: () => saveLabel({interest: value})})));
  const tags = label ? label.tags : [];
  if (tags.some((tag) => !Object.values(tagKeys).includes(tag))) assignTagKeys(Object.values(tagKeys)); // a new tag gets a key
  document.getElementById("tag-buttons").replaceChildren(...Object.entries(tagKeys).map(([key, tag]) =>
    el("button", {type: "button", class: tags.includes(tag) ? "chosen" : null, "aria-pressed": String(tags.includes(tag)),
                  title: `t then ${key}`, onclick: () => toggleTag(tag)}, el("kbd", {text: key}), ` ${tag}`)));
}

function renderNote() {
  const field = document.getElementById("note");
  if (document.activeElement !== field) field.value = label ? label.note : "";
  document.getElementById("note-shown").textContent =
    label && label.note ? `saved by ${label.user}` : "";
}

function saveNote() {
  const field = document.getElementById("note");
  saveLabel({note: field.value.trim()});
  field.blur();
}

function setTagMode(on) {
  tagMode = on;
  document.getElementById("tag-mode").hidden = !on;
}

function onKey(event) {
  if (isTyping(event)) return;
  if (tagMode) {
    event.preventDefault();
    setTagMode(false);
    if (event.key === "+") document.getElementById("new-tag").focus();
    else if (tagKeys[event.key]) toggleTag(tagKeys[event.key]);
    return;
  }
  const actions = {n: () => go(1), j: () => go(1), p: () => go(-1), k: () => go(-1), u: undo,
                   t: () => setTagMode(true), "/": () => document.getElementById("jump").focus(),
                   e: () => document.getElementById("note").focus(), z: resetZoom,
                   "?": () => document.getElementById("help").showModal(),
                   b: () => { window.location.href = `/?${listQuery(params)}`; }};
  if (/^[0-5]$/.test(event.key)) actions[event.key] = () => saveLabel({interest: Number(event.key)});
  if (actions[event.key]) {
    event.preventDefault();
    actions[event.key]();
  }
}

// -- what is shown of the object --------------------------------------------------------------------
function imageQuery() {
  const query = new URLSearchParams({stretch: document.getElementById("stretch").value,
                                     low: document.getElementById("low").value, high: document.getElementById("high").value});
  return query.toString();
}

/** The panels at the controls' settings; the server's page holds them at the initial ones (data-query). */
function renderPanels(object) {
  const panels = document.getElementById("panels");
  if (!object.has_image) {
    panels.replaceChildren(el("p", {class: "help", text: "no image for this object"}));
    return;
  }
  const query = imageQuery();
  if (panels.dataset.query === query) return; // shown already
  panels.dataset.query = query;
  panels.replaceChildren(
    el("figure", {}, el("img", {src: `/img/${objectId}/rgb.png?${query}`, alt: "RGB composite"}),
       el("figcaption", {text: "RGB (H, Y, VIS)"})),
    ...object.bands.map((band, index) => el("figure", {},
      el("img", {src: `/img/${objectId}/band/${index}.png?${query}`, alt: `${band} band`}),
      el("figcaption", {text: band}))));
}

function renderSpectrum(object) {
  const image = document.getElementById("spectrum");
  if (!object.has_spectrum) {
    image.replaceWith(el("p", {class: "help", text: "no spectrum for this object"}));
    return;
  }
  const query = new URLSearchParams({frame: document.getElementById("frame").value,
                                     smooth: document.getElementById("smooth").value});
  const low = document.getElementById("wave-low").value, high = document.getElementById("wave-high").value;
  if (low !== "" && high !== "" && Number(low) >= Number(high)) {
    showStatus("the wavelength range needs from < to", true);
    return;
  }
  if (low !== "") query.set("low", low);
  if (high !== "") query.set("high", high);
  const source = `/img/${objectId}/spectrum.png?${query}`;
  if (image.getAttribute("src") !== source) image.src = source; // the server's page holds the first one
}

function resetZoom() {
  document.getElementById("wave-low").value = "";
  document.getElementById("wave-high").value = "";
  document.getElementById("spectrum")?.dispatchEvent(new Event("rerender")); // absent: no spectrum
}

/** One line per model (its headline score, rank and percentile); every score of it on demand. */
function renderScores(object) {
  document.getElementById("scores").replaceChildren(...Object.entries(object.scores).map(([model, rows]) => {
    const headline = rows.find((row) => row.column === object.headlines[model]) || rows[0] || {};
    return el("details", {class: "model-scores"},
      el("summary", {}, el("span", {class: "model", text: model}),
         `${headline.column ?? "no score"} ${formatNumber(headline.score)} · rank ${headline.rank ?? "–"} · ` +
         `percentile ${formatNumber(headline.pct)}`),
      el("table", {},
        el("tr", {}, ...["score", "value", "rank", "percentile"].map((name) => el("th", {text: name}))),
        ...rows.map((row) => el("tr", {}, el("td", {text: row.column}), el("td", {text: formatNumber(row.score)}),
                                         el("td", {text: row.rank ?? "–"}), el("td", {text: formatNumber(row.pct)})))));
  }));
}

function renderSky(sky) {
  const box = document.getElementById("sky");
  if (!sky) {
    box.replaceChildren(el("p", {class: "help", text: "no position: neither the data nor the catalog give RA/Dec"}));
    return;
  }
  box.replaceChildren(
    el("div", {class: "position", text: `RA ${sky.ra.toFixed(6)}°  Dec ${sky.dec.toFixed(6)}°`}),
    el("div", {class: "position", text: sky.sexagesimal}),
    el("div", {class: "help", text: `galactic ${sky.galactic}`}),
    el("div", {class: "links"}, ...Object.entries(sky.links).map(([name, url]) =>
      el("a", {href: url, target: "_blank", rel: "noopener noreferrer", text: name}))));
}

/** The nuisance covariates of the cutout (fmb.models.measure.deblend.COVARIATES), flags as yes / no. */
const CROWDING = {neighbours: ["neighbours", "count"], neighbour_flux_ratio: ["brightest neighbour / object, flux", "ratio"],
                  neighbour_distance_px: ["nearest neighbour, px", "distance"], blended: ["blended", "flag"],
                  edge: ["cut by a detector edge", "flag"]};

function renderCrowding(crowding) {
  const rows = Object.entries(crowding).map(([name, value]) => {
    const [title, kind] = CROWDING[name] || [name.replaceAll("_", " "), "number"];
    const text = value === null ? "–" : kind === "flag" ? (value ? "yes" : "no") : kind === "count" ? String(value)
      : formatNumber(value);
    return el("tr", {class: kind === "flag" && value ? "flagged" : null}, el("th", {text: title}), el("td", {text}));
  });
  document.getElementById("crowding").replaceChildren(
    ...(rows.length ? rows : [el("tr", {}, el("td", {class: "help", text: "not measured: no model of the run stores crowding"}))]));
}

function renderCatalog(object) {
  const rows = {redshift: object.redshift, ...object.catalog};
  document.getElementById("catalog").replaceChildren(...Object.entries(rows).map(([name, value]) =>
    el("tr", {}, el("th", {text: name}), el("td", {text: typeof value === "number" ? formatNumber(value, 5) : value ?? "–"}))));
}

async function renderNeighbours() {
  const box = document.getElementById("neighbours");
  try {
    const found = await api(`/api/object/${objectId}/neighbours`);
    const rows = Object.entries(found).flatMap(([model, modalities]) => Object.entries(modalities).map(([modality, list]) =>
      el("div", {class: "neighbour-row"}, el("span", {class: "section-title", text: `${model} · ${modality}`}),
        ...list.map((neighbour) => el("a", {href: objectUrl(neighbour.object_id, params), class: "neighbour"},
          el("img", {src: `/img/${neighbour.object_id}/thumbnail.png`, alt: `object ${neighbour.object_id}`, loading: "lazy"}),
          el("span", {text: `${neighbour.object_id}`}), el("span", {text: `cos ${formatNumber(neighbour.similarity)}`}))))));
    box.replaceChildren(...(rows.length ? rows : [el("p", {class: "help", text: "no embeddings to search"})]));
  } catch (error) {
    box.replaceChildren(el("p", {class: "error", text: error.message}));
  }
}

async function start() {
  bindUserField();
  bindJumpField(params);
  document.getElementById("back").href = `/?${listQuery(params)}`;
  document.getElementById("figure-link").href = `/img/${objectId}/figure.png`;
  let object, choices;
  try {
    [object, choices] = await Promise.all([api(`/api/object/${objectId}`), api("/api/choices")]);
  } catch (error) {
    showStatus(error.message, true);
    return;
  }
  document.title = `fmb discovery: object ${objectId}`;
  document.getElementById("title").textContent = `Object ${objectId}` +
    (object.redshift === null ? "" : `  z = ${formatNumber(object.redshift, 4)}`);
  label = object.label;
  assignTagKeys(choices.tags);
  renderLabel();
  renderPanels(object);
  renderSpectrum(object);
  renderNote();
  renderSky(object.sky);
  renderCrowding(object.crowding);
  renderScores(object);
  renderCatalog(object);
  for (const id of ["stretch", "low", "high"]) document.getElementById(id).addEventListener("change", () => renderPanels(object));
  for (const id of ["frame", "smooth", "wave-low", "wave-high"]) {
    document.getElementById(id).addEventListener("change", () => renderSpectrum(object));
  }
  document.getElementById("spectrum")?.addEventListener("rerender", () => renderSpectrum(object));
  document.getElementById("zoom-reset").addEventListener("click", resetZoom);
  document.getElementById("save-note").addEventListener("click", saveNote);
  document.getElementById("note").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) saveNote();
    if (event.key === "Escape") event.target.blur();
  });
  document.getElementById("help-close").addEventListener("click", () => document.getElementById("help").close());
  document.getElementById("previous").addEventListener("click", () => go(-1));
  document.getElementById("next").addEventListener("click", () => go(1));
  document.getElementById("undo").addEventListener("click", undo);
  const newTag = document.getElementById("new-tag");
  newTag.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && newTag.value.trim()) {
      toggleTag(newTag.value.trim());
      newTag.value = "";
      newTag.blur();
    }
    if (event.key === "Escape") newTag.blur();
  });
  document.addEventListener("keydown", onKey);
  // the object's own images first (they are in the server's page): the list it is in and the next
  // object's images are asked for once they are in; the neighbours (a search of every index and a
  // thumbnail each) once the user has stayed a moment, so paging through objects with "n" does not
  // leave the server searching for pages already left while it answers the next one
  const loaded = document.readyState === "complete" ? Promise.resolve()
    : new Promise((resolve) => window.addEventListener("load", resolve, {once: true}));
  await loaded;
  setTimeout(renderNeighbours, NEIGHBOURS_AFTER_MS);
  locate().then(() => prefetchNext().catch(() => {}), // a prefetch that fails costs nothing
                (error) => showStatus(error.message, true));
}

start();
