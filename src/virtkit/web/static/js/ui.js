// Small DOM helpers shared by the pages: element builder, tables, messages,
// confirmation, number formatting.  No framework: pages build DOM directly.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return el;
}

/** A table: columns = [{title, num?}], rows = arrays of cells (strings or nodes). */
export function table(columns, rows, { empty = "Nothing here yet.", label } = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.title)));
  const body = rows.length
    ? rows.map((cells) => h("tr", {}, cells.map((cell, i) => h("td", { class: columns[i] && columns[i].num ? "num" : null }, cell))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty))];
  return h("div", { class: "table-wrap" }, h("table", { "aria-label": label }, h("thead", {}, head), h("tbody", {}, body)));
}

export function flash(message, kind = "info", ms = 5000) {
  const box = document.getElementById("flash");
  const toast = h("div", { class: `toast ${kind === "error" ? "error" : ""}`, role: kind === "error" ? "alert" : "status" }, message);
  box.append(toast);
  setTimeout(() => toast.remove(), kind === "error" ? ms * 2 : ms);
}

/** Report an error in plain words (an ApiError says what to do, too). */
export function showError(err, where) {
  const text = err && err.plain ? err.plain : String(err && err.message ? err.message : err);
  if (where) clear(where, h("div", { class: "error", role: "alert" }, text));
  else flash(text, "error");
}

/** Run an action from a button: disables it while running, reports the outcome. */
export async function act(button, action, success) {
  if (button) button.disabled = true;
  try {
    const result = await action();
    if (success) flash(typeof success === "function" ? success(result) : success);
    return result;
  } catch (err) {
    showError(err);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

export function confirmDialog(question, { confirm = "Confirm", danger = false, extra = null } = {}) {
  return new Promise((resolve) => {
    const yes = h("button", { class: danger ? "primary danger" : "primary", value: "yes" }, confirm);
    const dialog = h("dialog", { "aria-label": question },
      h("form", { method: "dialog" }, h("p", {}, question), extra,
        h("div", { class: "toolbar" }, h("span", { class: "spacer" }),
          h("button", { value: "no" }, "Cancel"), yes)));
    document.body.append(dialog);
    dialog.addEventListener("close", () => { resolve(dialog.returnValue === "yes"); dialog.remove(); });
    dialog.showModal();
    yes.focus();
  });
}

export function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function mib(n) { return n === null || n === undefined ? "-" : bytes(n * 1024 * 1024); }

export function stateBadge(state) { return h("span", { class: `state ${state}` }, state); }

export function usageBar(used, total, label) {
  const pct = total ? Math.min(100, (100 * used) / total) : 0;
  return h("div", { class: `bar ${pct > 90 ? "high" : ""}`, role: "meter", "aria-valuemin": 0,
    "aria-valuemax": 100, "aria-valuenow": Math.round(pct), "aria-label": label || "usage",
    title: `${pct.toFixed(0)}%` }, h("span", { style: `width:${pct}%` }));
}

export function time(epoch) { return new Date(epoch * 1000).toLocaleTimeString(); }

/** A form's fields as an object (checkboxes as booleans). */
export function formData(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === "checkbox") out[el.name] = el.checked;
    else if (el.type === "radio") { if (el.checked) out[el.name] = el.value; }
    else out[el.name] = el.value;
  }
  return out;
}

/** Call fn every ms (first after ms) until the returned stop() is called (the page's cleanup). */
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } catch (err) { /* the page shows its own errors */ }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => { stopped = true; clearTimeout(timer); };
}
