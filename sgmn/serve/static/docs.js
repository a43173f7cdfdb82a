// A small offline reader of the server's OpenAPI schema (Swagger UI would come from a CDN).
"use strict";

function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (className) e.className = className;
  return e;
}

function resolve(schema, spec) {
  while (schema && schema.$ref) schema = schema.$ref.split("/").slice(1).reduce((o, k) => o[k], spec);
  return schema || {};
}

function typeOf(schema, spec) {
  schema = resolve(schema, spec);
  if (schema.anyOf) return schema.anyOf.map((s) => typeOf(s, spec)).join(" | ");
  if (schema.type === "array") return `${typeOf(schema.items, spec)}[]`;
  if (schema.format === "binary") return "file";
  return schema.title && !schema.type ? schema.title : schema.type || "object";
}

function fieldList(schema, spec) {
  schema = resolve(schema, spec);
  const list = el("ul");
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    const p = resolve(prop, spec);
    list.append(el("li", `${name}${required.has(name) ? " (required)" : ""}: ${typeOf(prop, spec)}${p.description ? " — " + p.description : ""}`));
  }
  return list;
}

async function main() {
  const root = document.getElementById("endpoints");
  let spec;
  try {
    spec = await (await fetch("/openapi.json")).json();
  } catch (err) {
    root.replaceChildren(el("p", `cannot load /openapi.json: ${err.message}`, "error"));
    return;
  }
  root.replaceChildren();
  const intro = el("section", undefined, "panel");
  intro.append(el("h2", `${spec.info.title} ${spec.info.version}`), el("p", spec.info.description || ""));
  root.append(intro);
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const card = el("section", undefined, "panel endpoint");
      card.append(el("h2", `${method.toUpperCase()} ${path}`));
      if (op.summary) card.append(el("p", op.summary, "muted"));
      for (const p of op.parameters || []) {
        card.append(el("div", `${p.in} parameter ${p.name}${p.required ? " (required)" : ""}: ${typeOf(p.schema, spec)}`));
      }
      for (const [ctype, body] of Object.entries((op.requestBody || {}).content || {})) {
        card.append(el("h3", `body (${ctype})`), fieldList(body.schema, spec));
      }
      const codes = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description}`);
      card.append(el("div", `responses: ${codes.join(" · ")}`, "muted"));
      root.append(card);
    }
  }
}

document.addEventListener("DOMContentLoaded", main);
