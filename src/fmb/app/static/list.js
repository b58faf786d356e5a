"use strict";
// The list page: one ranked list (a model's score, or a re-ranker's list), filtered, a page at a time.

const params = new URLSearchParams(window.location.search);
const form = document.getElementById("controls");
let choices = null;
let shown = null; // the page on screen, as /api/list returned it

function option(value, text, selected, title) {
  return el("option", {value, text: text ?? value, selected: selected ? "selected" : null, title});
}

function fillColumns() {
  const model = choices.models[form.model.value];
  const wanted = params.get("column") || model.default;
  form.column.replaceChildren(...model.columns.map((column) => option(column, column, column === wanted)));
}

function fillControls() {
  const wantedModel = params.get("model") || Object.keys(choices.models)[0];
  form.model.replaceChildren(...Object.keys(choices.models).map((model) => option(model, model, model === wantedModel)));
  fillColumns();
  form.rerank.append(...Object.entries(choices.rerankers).map(([name, summary]) => option(name,
    name === choices.default_reranker ? `${name} (default)` : name, name === params.get("rerank"), summary)));
  form.tag.append(...choices.tags.map((tag) => option(tag, tag, tag === params.get("tag"))));
  for (const name of ["score_min", "score_max", "labelled", "min_interest", "z_min", "z_max"]) {
    if (params.get(name) !== null) form[name].value = params.get(name);
  }
  document.getElementById("redshift-filter").hidden = !choices.redshift;
  const chosen = new Set(params.getAll("cls"));
  document.getElementById("class-filters").replaceChildren(...Object.entries(choices.classes).map(([column, values]) =>
    el("label", {text: `${column} `}, el("select", {name: "cls"}, option("", "any"),
      ...values.map((value) => option(`${column}=${value}`, value, chosen.has(`${column}=${value}`)))))));
}

/** The form's choices become the page's URL (page 0): a reload or a link shows the same list. */
function readControls() {
  const next = new URLSearchParams();
  for (const [name, value] of new FormData(form)) {
    if (value !== "" && !(name === "labelled" && value === "any")) next.append(name, value);
  }
  for (const name of [...params.keys()]) params.delete(name);
  for (const [name, value] of next) params.append(name, value);
  window.history.replaceState(null, "", `/?${params}`);
}

async function load() {
  const query = listQuery(params);
  query.set("page", params.get("page") || "0");
  query.set("page_size", params.get("page_size") || PAGE_SIZE);
  try {
    shown = await api(`/api/list?${query}`);
  } catch (error) {
    showStatus(error.message, true);
    return;
  }
  showStatus(`${shown.total} objects in ${shown.ranking}`);
  document.getElementById("page-info").textContent = `page ${shown.page + 1} of ${shown.pages}`;
  document.getElementById("grid").replaceChildren(...shown.items.map(card));
  explainRandomSlice();
  const curve = document.getElementById("discovery");
  curve.hidden = !shown.discovery;
  document.getElementById("discovery-empty").hidden = shown.discovery;
  if (shown.discovery) {
    curve.src = `/img/discovery.png?model=${encodeURIComponent(shown.model)}&column=${encodeURIComponent(shown.column)}&t=${Date.now()}`;
  }
  linkExports();
}

/** The export links and the SAMP button: the labelled objects and the top of the list shown. */
function exportQuery() {
  return new URLSearchParams({model: shown.model, column: shown.column,
                              top: document.getElementById("export-top").value || "0"});
}

function linkExports() {
  for (const suffix of ["fits", "vot", "csv", "reg"]) {
    document.getElementById(`export-${suffix}`).href = `/api/export.${suffix}?${exportQuery()}`;
  }
}

async function sendSamp() {
  const query = exportQuery();
  try {
    const answer = await postJson("/api/samp", {model: query.get("model"), column: query.get("column"),
                                                top: Number(query.get("top"))});
    showStatus(`sent ${answer.objects} objects over SAMP to ${answer.sent_to.join(", ")}`);
  } catch (error) {
    showStatus(error.message, true);
  }
}

function explainRandomSlice() {
  const note = document.getElementById("random-note");
  const random = shown.items.filter((item) => item.random).length;
  note.hidden = !params.get("rerank");
  const made = shown.rerank;
  const when = made ? ` (${made.labels} labels, up to label event ${made.event}, ` +
    `${new Date(made.time * 1000).toLocaleString()})` : "";
  note.textContent = `Re-ranked by ${params.get("rerank")} from your labels${when}. ${random} of the ` +
    `${shown.items.length} objects on this page (marked "random") are drawn at random from the rest of the list ` +
    `below this page (each comes again at its own rank), so that the ` +
    `re-ranker also sees objects it would not choose and the loop does not only confirm itself.`;
}

function card(item) {
  const otherRanks = Object.entries(item.ranks).map(([model, rank]) => `${model} #${rank ?? "–"}`).join(" · ");
  return el("a", {class: `card${item.random ? " random" : ""}${item.label ? " labelled" : ""}`,
                  href: objectUrl(item.object_id, params, item.position), "data-id": item.object_id},
    el("img", {src: `/img/${item.object_id}/thumbnail.png`, alt: `object ${item.object_id}`, loading: "lazy"}),
    el("span", {class: "rank", text: `#${item.rank}`}),
    item.random ? el("span", {class: "badge", text: "random"}) : null,
    item.chosen_by && !item.random ? el("span", {class: "badge chosen-by", title: "the re-ranker that chose it",
                                                 text: item.chosen_by}) : null,
    el("span", {class: "id", text: String(item.object_id)}),
    el("span", {class: "score", text: `score ${formatNumber(item.score)}`}),
    el("span", {class: "ranks", text: otherRanks}),
    el("span", {class: "label", text: labelText(item.label)}));
}

function turnPage(delta) {
  const page = shown.page + delta;
  if (page < 0 || page >= shown.pages) return;
  params.set("page", page);
  window.history.replaceState(null, "", `/?${params}`);
  load();
}

async function rerank() {
  const method = form.rerank.value || choices.default_reranker;
  showStatus(`re-ranking with ${method}…`);
  try {
    const result = await postJson("/api/rerank", {model: form.model.value, column: form.column.value, method});
    form.rerank.value = method;
    readControls();
    showStatus(`re-ranked ${result.objects} objects from ${result.labelled} labels`);
  } catch (error) {
    showStatus(error.message, true);
    return;
  }
  load();
}

function onKey(event) {
  if (isTyping(event)) return;
  const actions = {n: () => turnPage(1), p: () => turnPage(-1), r: rerank,
                   "/": () => document.getElementById("jump").focus()};
  if (actions[event.key]) {
    event.preventDefault();
    actions[event.key]();
  }
}

async function start() {
  bindUserField();
  bindJumpField(params);
  try {
    choices = await api("/api/choices");
  } catch (error) {
    showStatus(error.message, true);
    return;
  }
  fillControls();
  form.model.addEventListener("change", () => { params.delete("column"); fillColumns(); });
  form.addEventListener("change", (event) => { if (event.target.type !== "number") { readControls(); load(); } });
  form.addEventListener("submit", (event) => { event.preventDefault(); readControls(); load(); });
  document.getElementById("rerank-button").addEventListener("click", rerank);
  document.getElementById("samp-send").addEventListener("click", sendSamp);
  document.getElementById("export-top").addEventListener("change", linkExports);
  document.getElementById("previous-page").addEventListener("click", () => turnPage(-1));
  document.getElementById("next-page").addEventListener("click", () => turnPage(1));
  document.addEventListener("keydown", onKey);
  load();
}

start();
