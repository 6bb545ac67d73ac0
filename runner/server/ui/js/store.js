// Conversations, kept in this browser's localStorage (never on the server).
// A conversation: {id, title, model, system, options, think, messages: [{role, content, thinking?,
// stats?, stopped?, error?}], created, updated}.

const KEY = "lm.conversations";

export function loadConversations() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return []; // a damaged entry must not keep the page from starting
  }
}

export function saveConversations(list) {
  localStorage.setItem(KEY, JSON.stringify(list));
}

export function newConversation(model) {
  const now = new Date().toISOString();
  const id = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  return { id, title: "New chat", model, system: "", options: {}, think: "", messages: [], created: now,
           updated: now };
}

export function exportConversation(conv) {
  const blob = new Blob([JSON.stringify(conv, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${conv.title.replace(/[^\w.-]+/g, "_").slice(0, 60) || "chat"}.json`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}
