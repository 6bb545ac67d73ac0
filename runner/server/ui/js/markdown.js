// Model output as safe HTML: Markdown through `marked`, then `DOMPurify`.
// HTML that the model writes is never parsed as markup: marked's html tokens are rendered as escaped
// text, so "<script>" shows as those characters. DOMPurify then cleans what marked made (defence in
// depth), and the page's Content-Security-Policy allows no inline script and no outside fetches.

import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.mjs";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const marked = new Marked({ gfm: true, breaks: true });
marked.use({ renderer: { html: ({ text }) => escapeHtml(text) } });

// Links open in a new tab and tell the target nothing about this page.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text || ""), {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
    FORBID_ATTR: ["style"],
  });
}
