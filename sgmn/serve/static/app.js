// The sgmn web page: plain JS over the JSON API (no build step, nothing fetched from outside).
"use strict";

const $ = (id) => document.getElementById(id);

// FastAPI sends {"detail": "..."} for our errors and {"detail": [{loc, msg}, ...]} for
// request-validation errors; both become one readable message.
async function api(method, url, body) {
  let response;
  try {
    response = await fetch(url, { method, body, headers: body && !(body instanceof FormData) ? { "content-type": "application/json" } : undefined });
  } catch (err) {
    throw new Error(`cannot reach the server (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON: keep the text */ }
  if (!response.ok) {
    let detail = data && data.detail !== undefined ? data.detail : text;
    if (Array.isArray(detail)) {
      detail = detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("\n");
    }
    throw new Error(`${response.status} ${response.statusText}: ${detail || "request failed"}`);
  }
  return data;
}

function show(el, message) { el.textContent = message; el.hidden = !message; }

function element(tag, props = {}, children = []) {
  const el = document.createElement(tag);
  Object.assign(el, props);
  for (const child of children) el.append(child);
  return el;
}

async function loadHealth() {
  try {
    const h = await api("GET", "/health");
    $("health").textContent = `model ${h.model.name} (${h.model.fingerprint.slice(0, 12)}) · ` +
      `${h.store.rooms} rooms · ${h.store.products} products`;
  } catch (err) {
    $("health").textContent = `server not healthy: ${err.message}`;
  }
}

async function loadRooms(select) {
  const rooms = await api("GET", "/rooms");
  const room = $("room");
  const previous = select || room.value;
  room.replaceChildren(...rooms.map((r) => element("option", { value: r.room_id, textContent: `${r.room_id} (${r.products} products)` })));
  if (!rooms.length) room.append(element("option", { value: "", textContent: "no rooms yet: create one below" }));
  if (rooms.some((r) => r.room_id === previous)) room.value = previous;
  await loadProducts();
}

let productsRequest = 0;  // room changes can overlap: only the latest answer is drawn

async function loadProducts() {
  const ticket = ++productsRequest;
  const room = $("room").value;
  $("products-room").textContent = room || "—";
  const products = room ? await api("GET", `/rooms/${encodeURIComponent(room)}/products`) : [];
  if (ticket !== productsRequest) return;
  $("products").replaceChildren(...products.map((p) => {
    const remove = element("button", { type: "button", textContent: "delete", title: `delete ${p.product_id}` });
    remove.addEventListener("click", () => deleteProduct(room, p.product_id));
    return element("li", { className: "product" }, [
      element("img", { src: p.image_url, alt: p.product_id }),
      element("span", { textContent: p.title ? `${p.product_id} — ${p.title}` : p.product_id }),
      remove,
    ]);
  }));
}

async function deleteProduct(room, productId) {
  show($("manage-error"), "");
  try {
    await api("DELETE", `/rooms/${encodeURIComponent(room)}/products/${encodeURIComponent(productId)}`);
    show($("manage-ok"), `deleted ${productId}`);
    await loadRooms(room);
    loadHealth();
  } catch (err) {
    show($("manage-error"), err.message);
  }
}

function queryForm() {
  const files = Array.from($("clip").files);
  if (!files.length) throw new Error("choose a video or some frame images first");
  const form = new FormData();
  const videos = files.filter((f) => f.type.startsWith("video/"));
  if (videos.length > 1 || (videos.length === 1 && files.length > 1)) {
    throw new Error("choose either one video or several images, not both");
  }
  if (videos.length === 1) form.append("clip", videos[0], videos[0].name);
  else for (const f of files) form.append("frames", f, f.name);
  const asr = $("asr").value.trim();
  if (asr) form.append("asr", asr);
  form.append("top_k", $("topk").value || "5");
  return form;
}

function renderResults(result) {
  const list = $("results");
  list.replaceChildren();
  result.hits.forEach((hit, i) => {
    list.append(element("li", { className: i === 0 ? "hit first" : "hit" }, [
      element("span", { className: "rank", textContent: `#${hit.rank}` }),
      element("img", { src: hit.image_url, alt: hit.product_id }),
      element("div", { className: "pid", textContent: hit.product_id }),
      element("div", { className: "title", textContent: hit.title || "(no title)" }),
      element("div", { className: "score", textContent: `score ${hit.score.toFixed(4)}` }),
    ]));
  });
  if (!result.hits.length) list.append(element("li", { textContent: "this room has no products yet" }));

  const frames = $("frames");
  frames.replaceChildren();
  const withHeat = result.frames.some((f) => f.heatmap);
  show($("frames-note"), withHeat ? "" : "this model gives no attention maps: frames shown without overlay");
  for (const f of result.frames) {
    const box = element("div", { className: "overlay" }, [
      element("img", { className: "frame-image", src: f.image, alt: `frame ${f.index}` }),
    ]);
    if (f.heatmap) box.append(element("img", { className: "heat", src: f.heatmap, alt: "" }));
    frames.append(element("figure", { className: "frame" }, [box, element("figcaption", { textContent: `frame ${f.index}` })]));
  }
  applyOpacity();
  $("results-panel").hidden = false;
}

function applyOpacity() {
  const value = Number($("opacity").value) / 100;
  for (const img of document.querySelectorAll(".overlay img.heat")) img.style.opacity = value;
}

async function onSearch(event) {
  event.preventDefault();
  show($("search-error"), "");
  const room = $("room").value;
  const button = $("search");
  try {
    if (!room) throw new Error("create a room first");
    const form = queryForm();
    button.disabled = true;
    button.textContent = "Searching…";
    renderResults(await api("POST", `/rooms/${encodeURIComponent(room)}/query`, form));
  } catch (err) {
    show($("search-error"), err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Search";
  }
}

async function onCreateRoom(event) {
  event.preventDefault();
  show($("manage-error"), ""); show($("manage-ok"), "");
  const roomId = $("new-room").value.trim();
  try {
    await api("POST", "/rooms", JSON.stringify({ room_id: roomId }));
    show($("manage-ok"), `created room ${roomId}`);
    $("new-room").value = "";
    await loadRooms(roomId);
    loadHealth();
  } catch (err) {
    show($("manage-error"), err.message);
  }
}

async function onAddProduct(event) {
  event.preventDefault();
  show($("manage-error"), ""); show($("manage-ok"), "");
  const room = $("room").value;
  const button = $("add-product");
  try {
    if (!room) throw new Error("create or pick a room first");
    const form = new FormData();
    form.append("product_id", $("product-id").value.trim());
    const title = $("product-title").value.trim();
    if (title) form.append("title", title);
    for (const f of $("product-images").files) form.append("images", f, f.name);
    button.disabled = true;
    const p = await api("POST", `/rooms/${encodeURIComponent(room)}/products`, form);
    show($("manage-ok"), `added ${p.product_id} to ${room}`);
    $("product-form").reset();
    await loadRooms(room);
    loadHealth();
  } catch (err) {
    show($("manage-error"), err.message);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", onSearch);
  $("room-form").addEventListener("submit", onCreateRoom);
  $("product-form").addEventListener("submit", onAddProduct);
  $("room").addEventListener("change", () => loadProducts().catch((err) => show($("manage-error"), err.message)));
  $("opacity").addEventListener("input", applyOpacity);
  loadHealth();
  loadRooms().catch((err) => show($("search-error"), `cannot list rooms: ${err.message}`));
});
