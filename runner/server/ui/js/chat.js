// The chat view: a conversation list, the messages, the composer and the per-conversation settings.
// Answers stream from /api/chat; Stop aborts the fetch, which cancels the generation on the server.

import * as api from "./api.js";
import { button } from "./dom.js";
import * as fmt from "./format.js";
import { renderMarkdown } from "./markdown.js";
import { exportConversation, loadConversations, newConversation, saveConversations } from "./store.js";

const $ = (id) => document.getElementById(id);
const OPTION_FIELDS = ["temperature", "top_p", "num_ctx", "num_predict", "seed"];

let conversations = loadConversations();
let current = null; // the open conversation (a draft until its first message)
let controller = null; // the AbortController of the answer being streamed
let streaming = null; // the assistant message being streamed
const views = new Map(); // message object -> its element, for updates while streaming
const dirty = new Set();

export function initChat() {
  $("new-chat").addEventListener("click", () => open(null));
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("model-select").addEventListener("change", () => {
    current.model = $("model-select").value;
    persist();
  });
  for (const input of [$("system-prompt"), $("opt-think"), ...OPTION_FIELDS.map((f) => $(`opt-${f}`))]) {
    input.addEventListener("change", () => {
      readSettings();
      persist();
    });
  }
  open(conversations[0] ? conversations[0].id : null);
}

// Fills the model menu (from /api/tags) and keeps the conversation's model chosen where it exists.
export function setModels(names) {
  const select = $("model-select");
  const wanted = (current && current.model) || select.value;
  select.replaceChildren(...names.map((name) => new Option(name, name)));
  if (!names.length) select.append(new Option("no models: pull one on the Models page", ""));
  if (names.includes(wanted)) select.value = wanted;
  if (current && !current.model) current.model = select.value;
}

export function chatWith(model) {
  open(null);
  $("model-select").value = model;
  current.model = model;
  $("prompt").focus();
}

function open(id) {
  current = conversations.find((c) => c.id === id) || newConversation($("model-select").value);
  writeSettings();
  if (current.model && [...$("model-select").options].some((o) => o.value === current.model)) {
    $("model-select").value = current.model;
  }
  renderList();
  renderMessages();
}

function persist() {
  if (!conversations.includes(current)) return; // a draft is saved with its first message
  current.updated = new Date().toISOString();
  saveConversations(conversations);
}

// ---------------------------------------------------------------- settings

function readSettings() {
  current.system = $("system-prompt").value;
  current.think = $("opt-think").value;
  current.options = {};
  for (const field of OPTION_FIELDS) {
    const value = $(`opt-${field}`).value.trim();
    if (value !== "") current.options[field] = Number(value);
  }
}

function writeSettings() {
  $("system-prompt").value = current.system || "";
  $("opt-think").value = current.think || "";
  for (const field of OPTION_FIELDS) {
    const value = (current.options || {})[field];
    $(`opt-${field}`).value = value === undefined ? "" : String(value);
  }
}

// ---------------------------------------------------------------- the conversation list

function renderList() {
  const items = conversations.map((conv) => {
    const li = document.createElement("li");
    li.className = conv === current ? "conversation active" : "conversation";
    const title = button(conv.title, "conversation-title", () => open(conv.id));
    title.title = `${conv.model || ""} · ${new Date(conv.updated).toLocaleString()}`;
    const actions = document.createElement("span");
    actions.className = "conversation-actions";
    actions.append(
      button("Rename", "link", () => rename(conv)),
      button("Export", "link", () => exportConversation(conv)),
      button("Delete", "link danger", () => remove(conv)),
    );
    li.append(title, actions);
    return li;
  });
  $("conversation-list").replaceChildren(...items);
  $("no-conversations").hidden = conversations.length > 0;
}

function rename(conv) {
  const title = prompt("Rename the conversation", conv.title);
  if (title === null || !title.trim()) return;
  conv.title = title.trim();
  saveConversations(conversations);
  renderList();
}

function remove(conv) {
  if (!confirm(`Delete the conversation "${conv.title}"?`)) return;
  conversations = conversations.filter((c) => c !== conv);
  saveConversations(conversations);
  if (conv === current) open(conversations[0] ? conversations[0].id : null);
  else renderList();
}

// ---------------------------------------------------------------- messages

function renderMessages() {
  views.clear();
  const elements = current.messages.map(messageView);
  $("messages").replaceChildren(...elements);
  $("empty-chat").hidden = current.messages.length > 0;
  scrollDown();
}

function messageView(message) {
  const el = document.createElement("article");
  el.className = `message ${message.role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : message.model || current.model || "assistant";
  const thinking = document.createElement("details");
  thinking.className = "thinking";
  thinking.innerHTML = "<summary>Thinking</summary><div class=\"thinking-text\"></div>";
  const body = document.createElement("div");
  body.className = message.role === "user" ? "body plain" : "body markdown";
  const meta = document.createElement("div");
  meta.className = "meta";
  el.append(who, thinking, body, meta);
  views.set(message, el);
  fill(message, el);
  return el;
}

function fill(message, el) {
  const [, thinking, body, meta] = el.children;
  thinking.hidden = !message.thinking;
  thinking.querySelector(".thinking-text").textContent = message.thinking || "";
  if (message.role === "user") body.textContent = message.content;
  else body.innerHTML = renderMarkdown(message.content); // sanitized: see markdown.js
  if (message !== streaming) addCopyButtons(body);
  el.classList.toggle("streaming", message === streaming);
  meta.replaceChildren();
  if (message.error) meta.append(span("error", `Error: ${message.error}`));
  const stats = statsText(message);
  if (stats) meta.append(span("stats", stats));
}

// A Copy button on each code block of a finished answer.
function addCopyButtons(body) {
  for (const pre of body.querySelectorAll("pre")) {
    const copy = button("Copy", "small copy-code", () => {
      navigator.clipboard.writeText(pre.querySelector("code")?.textContent ?? pre.textContent)
        .then(() => { copy.textContent = "Copied"; }, () => { copy.textContent = "Copy failed"; });
    });
    pre.prepend(copy);
  }
}

function span(className, text) {
  const s = document.createElement("span");
  s.className = className;
  s.textContent = text;
  return s;
}

// tokens/s from the final chunk's eval_count / eval_duration; time to first token measured here.
function statsText(m) {
  if (m.role !== "assistant" || m === streaming) return "";
  const parts = [];
  if (m.stopped) parts.push("stopped");
  if (m.stats && m.stats.evalDuration > 0) {
    parts.push(`${(m.stats.evalCount / (m.stats.evalDuration / 1e9)).toFixed(1)} tokens/s`);
  }
  if (m.ttftMs != null) parts.push(`first token ${fmt.seconds(m.ttftMs)}`);
  if (m.stats) parts.push(`${m.stats.evalCount} tokens`);
  if (m.stats && m.stats.doneReason === "length") parts.push("hit the length limit");
  return parts.join(" · ");
}

// Streaming re-renders at most once a frame, however fast the tokens come.
function update(message) {
  dirty.add(message);
  if (dirty.size === 1) {
    requestAnimationFrame(() => {
      for (const m of dirty) {
        const el = views.get(m);
        if (el) fill(m, el);
      }
      dirty.clear();
      scrollDown();
    });
  }
}

function scrollDown() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

// ---------------------------------------------------------------- sending

function notice(text) {
  $("chat-notice").textContent = text;
  $("chat-notice").hidden = !text;
}

// Image attachments plug in here once vision models land: an `images` array of base64 strings on the
// user message, sent as /api/chat's message.images (the #attach button is in the composer, hidden).
function userMessage(text) {
  return { role: "user", content: text };
}

async function send() {
  if (controller) return;
  const text = $("prompt").value.trim();
  if (!text) return;
  const model = $("model-select").value;
  if (!model) {
    notice("Choose a model first (pull one on the Models page).");
    return;
  }
  notice("");
  readSettings();
  current.model = model;
  if (!conversations.includes(current)) conversations.unshift(current);
  if (!current.messages.length) current.title = text.length > 48 ? `${text.slice(0, 47)}…` : text;
  current.messages.push(userMessage(text));
  const answer = { role: "assistant", model, content: "", thinking: "" };
  current.messages.push(answer);
  $("prompt").value = "";
  persist();
  renderList();
  streaming = answer;
  renderMessages();
  await streamAnswer(answer);
}

function requestBody(conv) {
  const messages = [];
  if (conv.system && conv.system.trim()) messages.push({ role: "system", content: conv.system });
  for (const m of conv.messages.slice(0, -1)) { // all but the answer being made
    if (m.error && !m.content) continue;
    const out = { role: m.role, content: m.content };
    if (m.images) out.images = m.images;
    messages.push(out);
  }
  const body = { model: conv.model, messages, stream: true, options: conv.options || {} };
  if (conv.think) body.think = conv.think === "on";
  return body;
}

async function streamAnswer(answer) {
  const conv = current;
  controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let firstAt = null;
  try {
    for await (const chunk of api.stream("/api/chat", requestBody(conv), controller.signal)) {
      const msg = chunk.message || {};
      if (firstAt === null && (msg.content || msg.thinking)) firstAt = performance.now();
      answer.content += msg.content || "";
      answer.thinking += msg.thinking || "";
      if (chunk.done) {
        answer.stats = { evalCount: chunk.eval_count || 0, evalDuration: chunk.eval_duration || 0,
                         promptCount: chunk.prompt_eval_count || 0, doneReason: chunk.done_reason };
      }
      update(answer);
    }
  } catch (err) {
    if (api.isAbort(err)) answer.stopped = true;
    else answer.error = err.message;
  } finally {
    answer.ttftMs = firstAt === null ? null : firstAt - started;
    controller = null;
    streaming = null;
    setBusy(false);
    conv.updated = new Date().toISOString();
    if (conversations.includes(conv)) saveConversations(conversations);
    const el = views.get(answer);
    if (el) fill(answer, el);
  }
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}
