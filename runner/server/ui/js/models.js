// The models view: the store (/api/tags, /api/show), running models (/api/ps), pull with progress,
// copy, delete and create from Modelfile text.

import * as api from "./api.js";
import { button } from "./dom.js";
import * as fmt from "./format.js";
import { parseModelfile } from "./modelfile.js";

const $ = (id) => document.getElementById(id);
const shown = new Map(); // digest -> /api/show's {context, capabilities}: a model's blobs never change
let listeners = { changed: () => {}, chat: () => {} };
let pullController = null;

export function initModels(callbacks) {
  listeners = { ...listeners, ...callbacks };
  $("models-refresh").addEventListener("click", () => refreshModels());
  $("pull-form").addEventListener("submit", (event) => {
    event.preventDefault();
    pull();
  });
  $("pull-cancel").addEventListener("click", () => pullController && pullController.abort());
  $("create-form").addEventListener("submit", (event) => {
    event.preventDefault();
    create();
  });
}

// Reloads both tables; gives the model names to `changed` (the chat's model menu).
export async function refreshModels() {
  const [tags, ps] = await Promise.all([api.getJSON("/api/tags"), api.getJSON("/api/ps")]);
  const models = tags.models || [];
  await Promise.all(models.map(details));
  renderInstalled(models);
  renderRunning(ps.models || []);
  listeners.changed(models.map((m) => m.name));
  return models;
}

async function details(model) {
  if (!shown.has(model.digest)) {
    try {
      const info = await api.call("POST", "/api/show", { model: model.name });
      const arch = (info.model_info || {})["general.architecture"];
      shown.set(model.digest, { context: (info.model_info || {})[`${arch}.context_length`],
                                capabilities: info.capabilities || [] });
    } catch {
      shown.set(model.digest, { context: null, capabilities: [] }); // a model that cannot be read still lists
    }
  }
  return shown.get(model.digest);
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (text instanceof Node) td.append(text);
  else td.textContent = text ?? "";
  return td;
}

// The tables are redrawn only when what they show changed, so that the 5-second refresh never swaps a
// button out from under the pointer.
const drawn = { installed: null, running: null };

function unchanged(table, data) {
  const key = JSON.stringify(data);
  if (drawn[table] === key) return true;
  drawn[table] = key;
  return false;
}

function renderInstalled(models) {
  if (unchanged("installed", models.map((m) => [m.name, m.digest, m.size, fmt.ago(m.modified_at)]))) return;
  const rows = models.map((m) => {
    const info = shown.get(m.digest) || {};
    const caps = document.createElement("span");
    for (const c of info.capabilities || []) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = c;
      caps.append(chip);
    }
    const actions = document.createElement("span");
    actions.className = "row-actions";
    actions.append(
      button("Chat", "small", () => listeners.chat(m.name)),
      button("Copy", "small", () => copy(m.name)),
      button("Delete", "small danger", () => remove(m.name)),
    );
    const tr = document.createElement("tr");
    tr.dataset.model = m.name;
    tr.append(cell(m.name, "name"), cell(fmt.bytes(m.size), "num"), cell(m.details.parameter_size),
              cell(m.details.quantization_level), cell(info.context ? info.context.toLocaleString() : "—", "num"),
              cell(caps), cell(fmt.ago(m.modified_at)), cell(actions));
    return tr;
  });
  $("installed-rows").replaceChildren(...rows);
  $("installed-empty").hidden = models.length > 0;
}

function renderRunning(models) {
  if (unchanged("running", models.map((m) => [m.name, m.size, m.size_vram, m.context_length,
                                              fmt.until(m.expires_at)]))) return;
  const rows = models.map((m) => {
    const tr = document.createElement("tr");
    tr.dataset.model = m.name;
    tr.append(cell(m.name, "name"), cell(fmt.bytes(m.size), "num"), cell(fmt.bytes(m.size_vram), "num"),
              cell(m.processor), cell((m.context_length || 0).toLocaleString(), "num"), cell(fmt.until(m.expires_at)),
              cell(button("Unload", "small", () => unload(m.name))));
    return tr;
  });
  $("running-rows").replaceChildren(...rows);
  $("running-empty").hidden = models.length > 0;
}

function say(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
}

async function act(what, work) {
  try {
    await work();
    await refreshModels();
  } catch (err) {
    say("models-notice", `${what} failed: ${err.message}`, true);
  }
}

function copy(name) {
  const destination = prompt(`Copy ${name} to the name:`, `${name.split(":")[0]}-copy`);
  if (!destination || !destination.trim()) return;
  act("Copy", () => api.call("POST", "/api/copy", { source: name, destination: destination.trim() }))
    .then(() => say("models-notice", ""));
}

function remove(name) {
  if (!confirm(`Delete ${name}? Its files are removed unless another model shares them.`)) return;
  act("Delete", () => api.call("DELETE", "/api/delete", { model: name }));
}

// keep_alive 0 on an empty generate unloads the model at once.
function unload(name) {
  act("Unload", () => api.call("POST", "/api/generate", { model: name, keep_alive: 0 }));
}

// ---------------------------------------------------------------- pull

async function pull() {
  const name = $("pull-name").value.trim();
  if (!name || pullController) return;
  pullController = new AbortController();
  const layers = new Map(); // digest -> {total, completed}: the bar shows bytes over every layer
  const bar = $("pull-progress");
  bar.removeAttribute("value"); // indeterminate until sizes are known
  $("pull-box").hidden = false;
  $("pull-cancel").hidden = false;
  $("pull-start").disabled = true;
  say("pull-status", `pulling ${name}…`);
  try {
    const body = { model: name, insecure: $("pull-insecure").checked, stream: true };
    for await (const p of api.stream("/api/pull", body, pullController.signal)) {
      if (p.digest && p.total) layers.set(p.digest, { total: p.total, completed: p.completed || 0 });
      let total = 0;
      let done = 0;
      for (const layer of layers.values()) {
        total += layer.total;
        done += layer.completed;
      }
      if (total) {
        bar.max = total;
        bar.value = done;
        say("pull-status", `${p.status}: ${fmt.bytes(done)} of ${fmt.bytes(total)} (${Math.floor((100 * done) / total)}%)`);
      } else {
        say("pull-status", p.status);
      }
    }
    say("pull-status", `Pulled ${name}`);
    await refreshModels();
  } catch (err) {
    if (api.isAbort(err)) say("pull-status", "Pull cancelled (the downloaded part is kept for the next try)");
    else say("pull-status", `Pull failed: ${err.message}`, true);
  } finally {
    pullController = null;
    $("pull-cancel").hidden = true;
    $("pull-start").disabled = false;
  }
}

// ---------------------------------------------------------------- create

async function create() {
  const name = $("create-name").value.trim();
  if (!name) {
    say("create-status", "Give the new model a name", true);
    return;
  }
  let fields;
  try {
    fields = parseModelfile($("create-modelfile").value);
  } catch (err) {
    say("create-status", `Modelfile: ${err.message}`, true);
    return;
  }
  say("create-status", "creating…");
  try {
    for await (const p of api.stream("/api/create", { model: name, ...fields, stream: true })) {
      say("create-status", p.status);
    }
    say("create-status", `Created ${name}`);
    await refreshModels();
  } catch (err) {
    say("create-status", `Create failed: ${err.message}`, true);
  }
}
