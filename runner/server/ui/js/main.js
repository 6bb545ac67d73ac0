// The page's start: the two views, the API-key dialog, and the first load of the models.

import * as api from "./api.js";
import { chatWith, initChat, setModels } from "./chat.js";
import { initModels, refreshModels } from "./models.js";

const $ = (id) => document.getElementById(id);
let runningTimer = null;

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  $("view-chat").hidden = view !== "chat";
  $("view-models").hidden = view !== "models";
  clearInterval(runningTimer);
  if (view === "models") {
    load();
    runningTimer = setInterval(() => load(true), 5000); // keeps /api/ps (expiry, unloads) current
  }
}

function banner(text) {
  $("banner").textContent = text;
  $("banner").hidden = !text;
}

// 401 from any call: ask for a key, saying whether one is missing or the one we sent was refused.
function askForKey(message) {
  const sent = api.getKey();
  $("key-reason").textContent = sent
    ? `The server refused this API key (${message}). Enter one of the keys it was started with (LM_API_KEYS).`
    : "This server needs an API key (it was started with LM_API_KEYS). Enter one of its keys.";
  $("key-reason").classList.toggle("error", Boolean(sent));
  banner(sent ? "API key refused: enter a valid key to use this server." : "An API key is needed.");
  if (!$("key-dialog").open) $("key-dialog").showModal();
  $("key-input").focus();
}

function initKeyDialog() {
  $("key-button").addEventListener("click", () => {
    $("key-reason").textContent = "The key is kept in this browser and sent to this server only.";
    $("key-reason").classList.remove("error");
    $("key-input").value = api.getKey();
    $("key-dialog").showModal();
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    api.setKey($("key-input").value.trim());
    $("key-input").value = "";
    $("key-dialog").close();
    banner("");
    load();
  });
  $("key-forget").addEventListener("click", () => {
    api.setKey("");
    $("key-dialog").close();
  });
  api.onUnauthorized(askForKey);
}

async function load(quiet = false) {
  try {
    await refreshModels();
    if (!quiet) banner("");
  } catch (err) {
    if (err.status === 401) return; // the key dialog says it
    banner(`Cannot reach the server: ${err.message}`);
  }
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
initKeyDialog();
initChat();
initModels({ changed: setModels, chat: (name) => { show("chat"); chatWith(name); } });
load();
