// The console's pages. Plain DOM: every value from the API goes in as text (textContent),
// never as HTML, so an event's subject or error cannot inject markup.

import { api, ApiError, account, setAccount, token, setToken, clearToken, call } from "./api.js";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

/// `el("td", {class: "num"}, "text", child)`: an element with attributes and children.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

function setText(node, text) {
  node.textContent = text;
}

function status(node, text, kind) {
  node.textContent = text || "";
  node.className = `status${kind ? " " + kind : ""}`;
}

function formatTime(rfc3339) {
  if (!rfc3339) return "";
  const date = new Date(rfc3339);
  if (Number.isNaN(date.getTime())) return rfc3339;
  return date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || text}` }, text);
}

function statusCell(attempt) {
  if (attempt.status === null || attempt.status === undefined) return el("span", { class: "muted" }, "no answer");
  const ok = attempt.status >= 200 && attempt.status < 300;
  return el("span", { class: `code-pill ${ok ? "ok" : "bad"}` }, String(attempt.status));
}

function attemptsTable(attempts, { withNumber = true } = {}) {
  const body = el("tbody");
  for (const a of attempts) {
    body.append(el("tr", { class: a.error ? "failed" : "ok" },
      withNumber ? el("td", { class: "num" }, a.number ?? "") : null,
      el("td", {}, badge(a.address, "role")),
      el("td", { class: "url" }, a.url),
      el("td", {}, statusCell(a)),
      el("td", { class: "error-text" }, a.error || ""),
      el("td", { class: "num" }, `${a.duration_ms} ms`)));
  }
  return body;
}

// ---------------------------------------------------------------------------------------
// Banner and session

function banner(message) {
  const node = $("#banner");
  setText(node, message || "");
  show(node, Boolean(message));
}

function handleError(err, target) {
  if (err instanceof ApiError && err.status === 401) {
    clearToken();
    banner("Your session token was refused; sign in again.");
    route();
    return;
  }
  const message = err instanceof ApiError ? err.message : String(err);
  if (target) {
    setText(target, message);
    show(target, true);
  } else {
    banner(message);
  }
}

// ---------------------------------------------------------------------------------------
// Sign in

function initSignin() {
  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#token");
    const error = $("#token-error");
    const value = input.value.trim();
    show(error, false);
    if (!value) {
      setText(error, "Enter an admin token.");
      show(error, true);
      return;
    }
    try {
      await call("GET", `/v1/accounts/${encodeURIComponent(account())}/webhook`, undefined, value);
      setToken(value);
      input.value = "";
      banner("");
      // Show the page that was asked for, or the overview when that was the sign-in page.
      if (!location.hash || location.hash.startsWith("#/signin")) location.hash = "#/overview";
      else route();
    } catch (err) {
      const message = err instanceof ApiError && (err.status === 401 || err.status === 403)
        ? "This token is not an admin token of this gateway."
        : (err.message || String(err));
      setText(error, message);
      show(error, true);
    }
  });
}

// ---------------------------------------------------------------------------------------
// Overview

let overviewTimer = null;

async function loadOverview() {
  try {
    const stats = await api.stats(account());
    setText($("#ov-received"), stats.totals.received.toLocaleString());
    setText($("#ov-delivered"), stats.totals.delivered.toLocaleString());
    setText($("#ov-failures"), stats.failures.toLocaleString());
    setText($("#ov-queue"), stats.queue_depth.toLocaleString());
    setText($("#ov-queue-note"), `pending here; ${stats.queue.depth.toLocaleString()} across all accounts`);
    const body = $("#ov-types tbody");
    body.replaceChildren(...stats.types.map((row) => el("tr", {},
      el("td", {}, badge(row.type, "type")),
      el("td", { class: "num" }, row.received.toLocaleString()),
      el("td", { class: "num" }, row.delivered.toLocaleString()),
      el("td", { class: "num" }, row.skipped.toLocaleString()),
      el("td", { class: "num" }, row.pending.toLocaleString()),
      el("td", { class: "num" }, row.failed.toLocaleString()),
      el("td", { class: "num" }, row.dead.toLocaleString()))));
    const tests = stats.tests.received;
    setText($("#ov-footnote"),
      `Updated ${formatTime(stats.generated_at)}.` +
      (tests ? ` Test pushes are not counted above (${tests} sent, ${stats.tests.delivered} delivered).` : ""));
    $("#ov-live").classList.remove("stale");
  } catch (err) {
    $("#ov-live").classList.add("stale");
    handleError(err);
  }
}

function enterOverview() {
  loadOverview();
  overviewTimer = setInterval(loadOverview, 5000);
}

function leaveOverview() {
  clearInterval(overviewTimer);
  overviewTimer = null;
}

// ---------------------------------------------------------------------------------------
// Webhook settings

let secretValue = null;
let secretShown = false;

function clearFieldErrors() {
  for (const node of $$("#settings-form .field-error")) {
    node.textContent = "";
    show(node, false);
  }
  for (const node of $$("#settings-form .invalid")) node.classList.remove("invalid");
  show($("#settings-error"), false);
}

function fieldError(field, message) {
  const node = $(`#settings-form .field-error[data-field="${field}"]`);
  if (!node) return false;
  node.textContent = node.textContent ? `${node.textContent} ${message}` : message;
  show(node, true);
  const input = field.startsWith("address-") ? $(`#${field}`) : null;
  if (input) input.classList.add("invalid");
  return true;
}

function renderSecret() {
  const node = $("#secret");
  const has = Boolean(secretValue);
  node.classList.toggle("masked", has && !secretShown);
  setText(node, has
    ? (secretShown ? secretValue : "whsec_" + "•".repeat(32))
    : "not generated yet: save the settings first");
  $("#reveal-secret").disabled = !has;
  $("#copy-secret").disabled = !has;
  $("#rotate-secret").disabled = !has;
  setText($("#reveal-secret"), secretShown ? "Hide" : "Reveal");
}

function fillSettings(settings) {
  $("#enabled").checked = Boolean(settings.enabled);
  for (let i = 0; i < 3; i++) {
    $(`#address-${i}`).value = settings.addresses[i] || "";
  }
  for (const box of $$('input[name="events"]')) {
    box.checked = settings.events.includes(box.value);
  }
  secretValue = settings.secret;
  secretShown = false;
  renderSecret();
  const saved = settings.updated_at ? `Last saved ${formatTime(settings.updated_at)}.` : "Never saved.";
  status($("#settings-status"), saved);
}

async function loadSettings() {
  clearFieldErrors();
  status($("#secret-status"), "");
  try {
    fillSettings(await api.settings(account()));
  } catch (err) {
    handleError(err, $("#settings-error"));
  }
}

async function saveSettings(event) {
  event.preventDefault();
  clearFieldErrors();
  // Empty fields are left out, so the API's addresses[i] may not be field i: keep the map.
  const addresses = [];
  const fieldOf = [];
  for (let i = 0; i < 3; i++) {
    const value = $(`#address-${i}`).value.trim();
    if (value) {
      addresses.push(value);
      fieldOf.push(`address-${i}`);
    }
  }
  if (!$("#address-0").value.trim() && addresses.length > 0) {
    fieldError("address-0", "Fill in the primary address first; backups are tried after it.");
    return;
  }
  const body = {
    enabled: $("#enabled").checked,
    addresses,
    events: $$('input[name="events"]:checked').map((box) => box.value),
  };
  const button = $("#save-settings");
  button.disabled = true;
  status($("#settings-status"), "Saving…");
  try {
    fillSettings(await api.saveSettings(account(), body));
    status($("#settings-status"), "Saved.", "good");
  } catch (err) {
    status($("#settings-status"), "");
    if (err instanceof ApiError && err.details.length) {
      const unplaced = [];
      for (const detail of err.details) {
        const match = /^addresses\[(\d+)\]$/.exec(detail.field);
        let field = detail.field;
        if (match) field = fieldOf[Number(match[1])] || "addresses";
        else if (/^events\[\d+\]$/.test(field)) field = "events";
        if (!fieldError(field, detail.message)) unplaced.push(detail.message);
      }
      const node = $("#settings-error");
      setText(node, unplaced.length ? `${err.message}: ${unplaced.join(" ")}` : "Nothing was saved: fix the fields marked above.");
      show(node, true);
    } else {
      handleError(err, $("#settings-error"));
    }
  } finally {
    button.disabled = false;
  }
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain-HTTP consoles have no async clipboard: copy through a hidden text area.
  const area = el("textarea", { class: "offscreen", readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("the browser refused to copy; reveal the secret and copy it by hand");
}

function initSettings() {
  $("#settings-form").addEventListener("submit", saveSettings);
  $("#reveal-secret").addEventListener("click", () => {
    secretShown = !secretShown;
    renderSecret();
  });
  $("#copy-secret").addEventListener("click", async () => {
    try {
      await copyText(secretValue);
      status($("#secret-status"), "Secret copied to the clipboard.", "good");
    } catch (err) {
      status($("#secret-status"), String(err.message || err), "bad");
    }
  });
  $("#rotate-secret").addEventListener("click", async () => {
    if (!confirm("Rotate the signing secret? The current one keeps signing alongside the new one for the grace period, so receivers have time to switch.")) return;
    try {
      const rotated = await api.rotateSecret(account());
      secretValue = rotated.secret;
      secretShown = true;
      renderSecret();
      status($("#secret-status"),
        `New secret in use. The previous one keeps signing until ${formatTime(rotated.previous_secret_expires_at)}.`, "good");
    } catch (err) {
      handleError(err, $("#settings-error"));
    }
  });
}

// ---------------------------------------------------------------------------------------
// Simulate Send Test

function renderTest(result) {
  const verdict = $("#test-verdict");
  const tries = result.attempts.length;
  const plural = tries === 1 ? "attempt" : "attempts";
  if (result.delivered) {
    verdict.className = "verdict good";
    setText(verdict, `Delivered to ${result.address} (${result.url}) after ${tries} ${plural}.`);
  } else if (result.timed_out) {
    verdict.className = "verdict warn";
    setText(verdict, `Not delivered yet: gave up waiting after ${tries} ${plural}` +
      (result.next_attempt_at ? `; the next attempt is due ${formatTime(result.next_attempt_at)}.` : "."));
  } else {
    verdict.className = "verdict bad";
    setText(verdict, `Not delivered (${result.state}) after ${tries} ${plural}` +
      (result.error ? `: ${result.error}` : "."));
  }
  setText($("#test-event-id"), result.event_id);
  const link = $("#test-msg-id");
  setText(link, result.msg_id);
  link.href = `#/messages?msg_id=${encodeURIComponent(result.msg_id)}`;
  $("#test-state").replaceChildren(badge(result.state));
  $("#test-attempts tbody").replaceWith(attemptsTable(result.attempts));
  setText($("#test-payload"), JSON.stringify(result.payload, null, 2));
  const headers = result.headers || {};
  $("#test-headers tbody").replaceChildren(...Object.entries(headers).map(([name, value]) =>
    el("tr", {}, el("th", {}, name), el("td", {}, el("code", {}, value)))));
  show($("#test-headers-note"), !result.headers);
  show($("#test-result"), true);
}

function initTest() {
  $("#test-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("#run-test");
    const error = $("#test-error");
    show(error, false);
    button.disabled = true;
    status($("#test-status"), "Pushing a test event… (waits at most a minute)", "busy");
    try {
      const result = await api.testPush(account(), $("#test-type").value);
      renderTest(result);
      status($("#test-status"), "");
    } catch (err) {
      status($("#test-status"), "");
      if (err instanceof ApiError && err.details.length) {
        setText(error, err.details.map((d) => d.message).join(" "));
        show(error, true);
      } else {
        handleError(err, error);
      }
    } finally {
      button.disabled = false;
    }
  });
}

// ---------------------------------------------------------------------------------------
// Message lookup

function eventCard(e) {
  const facts = [];
  if (e.delivered_to) facts.push(el("span", {}, "Delivered to ", badge(e.delivered_to, "role")));
  if (e.reason) facts.push(el("span", {}, `Skipped: ${e.reason}`));
  if (e.last_error) facts.push(el("span", { class: "error-text" }, `Last error: ${e.last_error}`));
  if (e.state === "pending" && e.next_attempt_at) facts.push(el("span", {}, `Next attempt ${formatTime(e.next_attempt_at)}`));
  const table = e.attempts.length
    ? el("table", { class: "table compact" },
      el("thead", {}, el("tr", {}, ...["#", "Address", "URL", "Status", "Error", "Time"].map((h) => el("th", {}, h)))),
      attemptsTable(e.attempts))
    : el("p", { class: "muted small" }, "No attempts.");
  return el("article", { class: `event card state-${e.state}`, "data-event-id": e.event_id },
    el("header", { class: "event-head" },
      badge(e.type, "type"),
      el("time", { datetime: e.timestamp }, formatTime(e.timestamp)),
      badge(e.state),
      e.test ? badge("test", "test") : null,
      el("code", { class: "event-id" }, e.event_id)),
    facts.length ? el("p", { class: "event-facts" }, ...facts) : null,
    table);
}

async function lookup(msgId) {
  const error = $("#lookup-error");
  show(error, false);
  const timeline = $("#timeline");
  timeline.replaceChildren();
  if (!msgId) return;
  try {
    const found = await api.message(account(), msgId);
    timeline.replaceChildren(
      el("p", { class: "muted" }, `${found.events.length} event${found.events.length === 1 ? "" : "s"} for `, el("code", {}, found.msg_id)),
      ...found.events.map(eventCard));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      setText(error, `No events with MsgId ${msgId} for account ${account()}.`);
      show(error, true);
    } else {
      handleError(err, error);
    }
  }
}

function initMessages() {
  $("#lookup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const msgId = $("#msg-id").value.trim();
    // Through the hash, so the lookup can be bookmarked and reloaded.
    const target = `#/messages?msg_id=${encodeURIComponent(msgId)}`;
    if (location.hash === target) lookup(msgId);
    else location.hash = target;
  });
}

function enterMessages(params) {
  const msgId = params.get("msg_id") || "";
  $("#msg-id").value = msgId;
  lookup(msgId);
}

// ---------------------------------------------------------------------------------------
// Failures

async function replay(eventIds) {
  const label = eventIds ? "Replaying…" : "Replaying all…";
  status($("#failures-status"), label, "busy");
  try {
    const done = await api.replay(account(), eventIds);
    status($("#failures-status"), `Queued ${done.replayed} event${done.replayed === 1 ? "" : "s"} for delivery again.`, "good");
    await loadFailures(false);
  } catch (err) {
    status($("#failures-status"), "");
    handleError(err);
  }
}

async function loadFailures(resetStatus = true) {
  if (resetStatus) status($("#failures-status"), "");
  try {
    const found = await api.failures(account());
    const body = $("#failures-table tbody");
    body.replaceChildren(...found.events.map((e) => el("tr", { "data-event-id": e.event_id },
      el("td", {}, formatTime(e.accepted_at)),
      el("td", {}, badge(e.type, "type"), e.test ? badge("test", "test") : null),
      el("td", {}, el("a", { href: `#/messages?msg_id=${encodeURIComponent(e.msg_id)}` }, e.msg_id)),
      el("td", {}, badge(e.state)),
      el("td", { class: "num" }, e.attempts.length),
      el("td", { class: "error-text" }, e.last_error || ""),
      el("td", {}, el("button", { type: "button", class: "small replay-one", onclick: () => replay([e.event_id]) }, "Replay")))));
    show($("#failures-empty"), found.events.length === 0);
    show($("#failures-table"), found.events.length > 0);
    $("#replay-all").disabled = found.events.length === 0;
  } catch (err) {
    handleError(err);
  }
}

function initFailures() {
  $("#replay-all").addEventListener("click", () => replay(null));
  $("#refresh-failures").addEventListener("click", () => loadFailures());
}

// ---------------------------------------------------------------------------------------
// Router

const pages = {
  signin: {},
  overview: { enter: enterOverview, leave: leaveOverview },
  settings: { enter: loadSettings },
  test: {},
  messages: { enter: enterMessages },
  failures: { enter: () => loadFailures() },
};

let current = null;

function route() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  let name = pages[path] ? path : "overview";
  if (!token()) name = "signin";
  else if (name === "signin") name = "overview";
  if (current && pages[current].leave) pages[current].leave();
  current = name;
  for (const section of $$(".page")) show(section, section.id === `page-${name}`);
  show($("#topbar"), name !== "signin");
  for (const link of $$("#nav a")) link.classList.toggle("active", link.dataset.page === name);
  if (pages[name].enter) pages[name].enter(new URLSearchParams(query));
  if (name === "signin") $("#token").focus();
}

function initAccount() {
  const input = $("#account-input");
  input.value = account();
  const apply = () => {
    const value = input.value.trim();
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(value)) {
      banner("An account is 1 to 64 characters of A-Z, a-z, 0-9, _, . and -.");
      return;
    }
    if (value !== account()) {
      setAccount(value);
      route();
    }
  };
  input.addEventListener("change", apply);
  $("#account-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apply();
  });
  $("#sign-out").addEventListener("click", () => {
    clearToken();
    route();
  });
}

initSignin();
initSettings();
initTest();
initMessages();
initFailures();
initAccount();
window.addEventListener("hashchange", () => {
  banner("");
  route();
});
route();
