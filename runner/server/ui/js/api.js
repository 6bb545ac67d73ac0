// The daemon's API as the page uses it: the API key, JSON calls, NDJSON streams and readable errors.
// Every call goes to this page's own origin, so the daemon's CORS and Host rules apply as to any client.

const KEY_STORAGE = "lm.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

// main.js shows the key dialog when the server says 401.
let unauthorizedHandler = () => {};
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

function errorText(data, fallback) {
  const error = data && data.error;
  if (typeof error === "string") return error;
  if (error && typeof error.message === "string") return error.message; // the /v1 shape
  return fallback;
}

async function send(method, path, body, signal) {
  const headers = {};
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      message = errorText(await resp.json(), message);
    } catch { /* not JSON: keep the status line */ }
    if (resp.status === 401) unauthorizedHandler(message);
    throw new ApiError(resp.status, message);
  }
  return resp;
}

export async function getJSON(path) {
  return (await send("GET", path)).json();
}

export async function call(method, path, body) {
  const text = await (await send(method, path, body)).text();
  return text ? JSON.parse(text) : null;
}

// Yields the objects of an NDJSON answer as they arrive. An {"error"} line (a failure after the
// stream began) is thrown. Aborting `signal` closes the connection, which cancels the request on
// the server (a generation frees its slot, a pull stops downloading).
export async function* stream(path, body, signal) {
  const resp = await send("POST", path, body, signal);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      let newline;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline).trim();
        pending = pending.slice(newline + 1);
        if (line) yield parseLine(line);
      }
    }
    if (pending.trim()) yield parseLine(pending.trim());
  } finally {
    reader.releaseLock();
  }
}

function parseLine(line) {
  const obj = JSON.parse(line);
  if (obj.error) throw new ApiError(500, errorText(obj, "the stream failed"));
  return obj;
}

export function isAbort(err) {
  return err && err.name === "AbortError";
}
