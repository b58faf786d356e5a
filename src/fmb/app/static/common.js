"use strict";
// Shared by the list page and the object page: the server's API, the list a page belongs to,
// and a few DOM helpers. Every list and image is computed by the server; pages keep only what
// they show, and the list they came from in their own URL (so a reload shows the same thing).

/** The query parameters that name a ranked list and its filters (not its page). */
const LIST_PARAMS = ["model", "column", "rerank", "page_size", "score_min", "score_max", "labelled",
  "min_interest", "tag", "z_min", "z_max", "cls"];
const ID_PATTERN = /^-?\d{1,19}$/;
const PAGE_SIZE = 48; // objects per page unless the list's URL says otherwise

async function api(url, options = {}) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function postJson(url, data) {
  return api(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)});
}

/** The list parameters of `params` (URLSearchParams) that are set, as a new URLSearchParams. */
function listQuery(params) {
  const query = new URLSearchParams();
  for (const name of LIST_PARAMS) {
    for (const value of params.getAll(name)) {
      if (value !== "") query.append(name, value);
    }
  }
  return query;
}

/** The object page of `objectId`, in the list of `params`, at `position` in it when known. */
function objectUrl(objectId, params, position) {
  const query = listQuery(params);
  if (position !== undefined && position !== null) query.set("pos", position);
  return `/object/${objectId}?${query}`;
}

function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") element.textContent = value;
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

function showStatus(message, isError = false) {
  const status = document.getElementById("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function formatNumber(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toPrecision(digits);
}

function labelText(label) {
  if (!label) return "";
  const interest = label.interest === null ? "" : `interest ${label.interest}`;
  return [interest, ...label.tags].filter(Boolean).join(" · ");
}

/** Keys typed into a field are text, not commands. */
function isTyping(event) {
  return ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) || event.ctrlKey || event.metaKey || event.altKey;
}

/** The labeller's name: kept in this browser, sent with every label. */
function currentUser() {
  return localStorage.getItem("fmb-user") || "anonymous";
}

function bindUserField() {
  const field = document.getElementById("user");
  field.value = currentUser();
  field.addEventListener("change", () => localStorage.setItem("fmb-user", field.value.trim() || "anonymous"));
}

/** Open object `text` (an id typed by the user) in the list of `params`. */
function jumpTo(text, params) {
  const id = text.trim();
  if (!ID_PATTERN.test(id)) {
    showStatus(`"${id}" is not an object id (a whole number)`, true);
    return;
  }
  window.location.href = objectUrl(id, params);
}

function bindJumpField(params) {
  const field = document.getElementById("jump");
  field.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      jumpTo(field.value, params);
    }
    if (event.key === "Escape") field.blur();
  });
  return field;
}
