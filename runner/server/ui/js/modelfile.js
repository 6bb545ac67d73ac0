// Modelfile text to /api/create's JSON fields (from, parameters, system, template, messages, license).
// The browser cannot hand the server a local file, so FROM names a model already in the store;
// ADAPTER (a file) is refused with a message that says to use `lm create`.

const MULTI = new Set(["stop"]); // parameters that may repeat, sent as a list

// Splits "KEYWORD rest", reading a """triple-quoted""" or "quoted" rest over several lines.
function* instructions(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line || line.startsWith("#")) continue;
    const match = /^(\S+)\s*(.*)$/s.exec(line);
    let [, keyword, rest] = match;
    if (rest.startsWith('"""')) {
      let body = rest.slice(3);
      while (!body.includes('"""') && i + 1 < lines.length) body += `\n${lines[++i]}`;
      const end = body.indexOf('"""');
      if (end < 0) throw new Error(`${keyword}: the """ block is not closed`);
      rest = body.slice(0, end);
    } else if (rest.length > 1 && rest.startsWith('"') && rest.endsWith('"')) {
      rest = rest.slice(1, -1);
    }
    yield [keyword.toUpperCase(), rest];
  }
}

function typed(value) {
  if (/^-?\d+(\.\d+)?(e-?\d+)?$/i.test(value)) return Number(value);
  if (value === "true" || value === "false") return value === "true";
  return value.replace(/^"(.*)"$/s, "$1");
}

export function parseModelfile(text) {
  const body = {};
  for (const [keyword, rest] of instructions(text)) {
    if (keyword === "FROM") body.from = rest.trim();
    else if (keyword === "SYSTEM") body.system = rest;
    else if (keyword === "TEMPLATE") body.template = rest;
    else if (keyword === "LICENSE") (body.license = body.license || []).push(rest);
    else if (keyword === "PARAMETER") {
      const [, name, value] = /^(\S+)\s+(.*)$/s.exec(rest.trim()) || [];
      if (!name) throw new Error(`PARAMETER needs a name and a value: "${rest}"`);
      body.parameters = body.parameters || {};
      if (MULTI.has(name)) (body.parameters[name] = body.parameters[name] || []).push(typed(value.trim()));
      else body.parameters[name] = typed(value.trim());
    } else if (keyword === "MESSAGE") {
      const [, role, content] = /^(\S+)\s+(.*)$/s.exec(rest.trim()) || [];
      if (!role) throw new Error(`MESSAGE needs a role and a text: "${rest}"`);
      (body.messages = body.messages || []).push({ role, content });
    } else if (keyword === "ADAPTER") {
      throw new Error("ADAPTER names a file, which a browser cannot send: use `lm create -f` for adapters");
    } else {
      throw new Error(`unknown instruction: ${keyword}`);
    }
  }
  if (!body.from) throw new Error("the Modelfile needs a FROM line naming a model in the store");
  return body;
}
