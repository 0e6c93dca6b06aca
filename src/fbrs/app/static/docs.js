// The API documentation page: renders /openapi.json with nothing loaded from outside the app.
"use strict";

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function resolve(schema, root) {
  if (schema && schema.$ref) {
    return schema.$ref.replace(/^#\//, "").split("/").reduce((node, key) => node[key], root);
  }
  return schema || {};
}

function typeOf(schema, root) {
  const resolved = resolve(schema, root);
  if (resolved.anyOf) return resolved.anyOf.map((item) => typeOf(item, root)).join(" | ");
  if (resolved.enum) return resolved.enum.map((item) => JSON.stringify(item)).join(" | ");
  if (resolved.type === "array") return `${typeOf(resolved.items, root)}[]`;
  return resolved.type || resolved.title || "object";
}

function fieldTable(rows) {
  const table = element("table");
  const head = element("tr");
  ["name", "in", "type", "description"].forEach((name) => head.append(element("th", name)));
  table.append(head);
  rows.forEach((row) => {
    const line = element("tr");
    row.forEach((cell) => line.append(element("td", cell)));
    table.append(line);
  });
  return table;
}

function renderOperation(path, method, operation, root) {
  const block = element("div", undefined, "endpoint");
  const title = element("div");
  title.append(element("span", method.toUpperCase(), "method"), element("code", path));
  block.append(title);
  if (operation.summary) block.append(element("p", operation.summary));
  if (operation.description && operation.description !== operation.summary) {
    block.append(element("p", operation.description, "muted"));
  }
  const rows = (operation.parameters || []).map((parameter) => [
    parameter.name + (parameter.required ? " *" : ""), parameter.in, typeOf(parameter.schema, root),
    parameter.description || (parameter.schema && parameter.schema.description) || "",
  ]);
  const content = operation.requestBody && operation.requestBody.content;
  if (content) {
    Object.entries(content).forEach(([mediaType, body]) => {
      const schema = resolve(body.schema, root);
      const required = new Set(schema.required || []);
      Object.entries(schema.properties || {}).forEach(([name, property]) => {
        const resolved = resolve(property, root);
        rows.push([name + (required.has(name) ? " *" : ""), mediaType, typeOf(property, root),
          resolved.description || property.description || ""]);
      });
    });
  }
  if (rows.length) block.append(fieldTable(rows));
  const codes = Object.entries(operation.responses || {}).map(([code, response]) => `${code} ${response.description}`);
  if (codes.length) block.append(element("p", `responses: ${codes.join("; ")}`, "muted"));
  return block;
}

async function start() {
  const target = document.getElementById("endpoints");
  try {
    const schema = await (await fetch("/openapi.json")).json();
    document.getElementById("title").textContent = `${schema.info.title} ${schema.info.version}: HTTP API`;
    document.getElementById("description").textContent = schema.info.description || "";
    target.replaceChildren();
    Object.entries(schema.paths).forEach(([path, methods]) => {
      Object.entries(methods).forEach(([method, operation]) => {
        target.append(renderOperation(path, method, operation, schema));
      });
    });
  } catch (error) {
    target.textContent = `cannot load /openapi.json: ${error.message}`;
  }
}

start();
