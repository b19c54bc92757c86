// The VM list: state, live CPU and memory, search, and bulk actions on the
// selected VMs (start, shut down, force off, delete).  Rows are rebuilt from one
// HTML string per refresh so a list of hundreds of VMs renders in one layout.
// In a cluster the list is every host's, with a Host column; an action on a VM of
// another host goes to this daemon, which carries it to that host (docs/cluster.md).

import { DELETE_QUERY, del, domainPath, get, post } from "../api.js";
import { clear, confirmDialog, every, flash, h, showError } from "../ui.js";
import { onEvent } from "../feed.js";

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

const BULK = [
  { label: "Start", action: (n) => post(domainPath(n, "/start"), {}), when: (d) => d.state === "shutoff" || d.state === "crashed" },
  { label: "Shut down", action: (n) => post(domainPath(n, "/shutdown"), {}), when: (d) => d.state === "running" },
  { label: "Force off", action: (n) => post(domainPath(n, "/destroy"), {}), when: (d) => d.state !== "shutoff", danger: true },
  { label: "Delete", action: (n) => del(domainPath(n, DELETE_QUERY)), when: (d) => d.state === "shutoff", danger: true },
];

export async function render(root) {
  let domains = [];
  const cpu = new Map(); // name -> {time, at, percent}
  const memory = new Map(); // name -> rss KiB
  const selected = new Set();
  const search = h("input", { type: "search", placeholder: "Search by name or state", "aria-label": "Search virtual machines" });
  const count = h("span", { class: "muted", "aria-live": "polite" });
  const bulkButtons = BULK.map((b) => h("button", { class: b.danger ? "danger" : null, disabled: true, onclick: (e) => runBulk(b, e.target) }, b.label));
  const selectAll = h("input", { type: "checkbox", "aria-label": "Select all shown" });
  const tbody = h("tbody", { id: "vm-rows" });
  const hostHead = h("th", { hidden: true }, "Host");
  const tableEl = h("div", { class: "table-wrap" }, h("table", { "aria-label": "Virtual machines" },
    h("thead", {}, h("tr", {}, h("th", {}, selectAll), h("th", {}, "Name"), h("th", {}, "State"), hostHead,
      h("th", { class: "num" }, "vCPUs"), h("th", { class: "num" }, "CPU"), h("th", { class: "num" }, "Memory"),
      h("th", { class: "num", title: "memory the QEMU process uses on the host" }, "Host RSS"))), tbody));
  clear(root, h("div", { class: "toolbar" }, h("h1", {}, "Virtual machines"), h("span", { class: "spacer" }),
    h("a", { class: "button primary", href: "#/new" }, "New VM")),
  h("div", { class: "toolbar" }, search, count, h("span", { class: "spacer" }), h("span", { class: "muted" }, "Selected:"), bulkButtons),
  tableEl);

  const shown = () => {
    const text = search.value.trim().toLowerCase();
    return text ? domains.filter((d) => d.name.toLowerCase().includes(text) || d.state.includes(text) || (d.host || "").includes(text)) : domains;
  };

  const draw = () => {
    const rows = shown();
    for (const name of [...selected]) if (!domains.some((d) => d.name === name)) selected.delete(name);
    const clustered = domains.some((d) => d.host);
    hostHead.hidden = !clustered;
    tbody.innerHTML = rows.map((d) => {
      const c = cpu.get(d.name);
      const rss = memory.get(d.name);
      return `<tr data-name="${esc(d.name)}"><td><input type="checkbox" aria-label="Select ${esc(d.name)}"${selected.has(d.name) ? " checked" : ""}></td>` +
        `<td><a href="#/vm/${encodeURIComponent(d.name)}">${esc(d.name)}</a></td>` +
        `<td><span class="state ${esc(d.state)}">${esc(d.state)}</span></td>` +
        (clustered ? `<td class="host">${esc(d.host || "-")}</td>` : "") +
        `<td class="num">${d.vcpus ?? "-"}</td>` +
        `<td class="num">${d.state === "running" && c && c.percent !== undefined ? c.percent.toFixed(1) + " %" : "-"}</td>` +
        `<td class="num">${d.memory_mib === undefined ? "-" : d.memory_mib + " MiB"}</td>` +
        `<td class="num">${d.state === "running" && rss ? (rss / 1024).toFixed(0) + " MiB" : "-"}</td></tr>`;
    }).join("") || `<tr><td colspan="${clustered ? 8 : 7}" class="muted">No virtual machines${search.value ? " match" : " yet: create one with New VM"}.</td></tr>`;
    count.textContent = `${rows.length} of ${domains.length}`;
    selectAll.checked = rows.length > 0 && rows.every((d) => selected.has(d.name));
    updateBulk();
  };

  const updateBulk = () => {
    const chosen = domains.filter((d) => selected.has(d.name));
    BULK.forEach((b, i) => { bulkButtons[i].disabled = !chosen.some(b.when); });
  };

  tbody.addEventListener("change", (e) => {
    const row = e.target.closest("tr");
    if (!row || e.target.type !== "checkbox") return;
    if (e.target.checked) selected.add(row.dataset.name); else selected.delete(row.dataset.name);
    selectAll.checked = shown().every((d) => selected.has(d.name));
    updateBulk();
  });
  selectAll.addEventListener("change", () => {
    for (const d of shown()) { if (selectAll.checked) selected.add(d.name); else selected.delete(d.name); }
    draw();
  });
  search.addEventListener("input", draw);

  async function runBulk(bulk, button) {
    const targets = domains.filter((d) => selected.has(d.name) && bulk.when(d)).map((d) => d.name);
    if (!targets.length) return;
    if (bulk.danger && !await confirmDialog(`${bulk.label}: ${targets.join(", ")}?`, { confirm: bulk.label, danger: true })) return;
    button.disabled = true;
    const results = await Promise.allSettled(targets.map((n) => bulk.action(n)));
    const failed = results.map((r, i) => [r, targets[i]]).filter(([r]) => r.status === "rejected");
    for (const [r, name] of failed) showError({ plain: `${name}: ${r.reason.plain || r.reason.message}` });
    if (failed.length < targets.length) flash(`${bulk.label}: done for ${targets.length - failed.length} VM(s)`);
    if (bulk.label === "Delete") for (const n of targets) selected.delete(n);
    await refresh();
  }

  const refresh = async () => {
    domains = await get("/v1/domains?all=1&cluster=1");
    domains.sort((a, b) => a.name.localeCompare(b.name));
    draw();
  };

  const refreshStats = async () => {
    if (!domains.some((d) => d.state === "running")) return;
    const stats = await get("/v1/domstats?active=1&groups=state,cpu-total,balloon");
    const now = performance.now() / 1000;
    for (const s of stats) {
      const previous = cpu.get(s.name);
      const entry = { time: s.cpu.time, at: now };
      if (previous && now > previous.at) entry.percent = Math.max(0, (100 * (s.cpu.time - previous.time)) / (now - previous.at));
      cpu.set(s.name, entry);
      if (s.balloon && s.balloon.rss) memory.set(s.name, s.balloon.rss);
    }
    draw();
  };

  await refresh();
  refreshStats().catch(() => {});
  let pending = null;
  const stopEvents = onEvent((event) => {
    if (!event.domain && !event.uuid) return;
    clearTimeout(pending);
    pending = setTimeout(() => refresh().catch(() => {}), 150);
  });
  const stopPolling = every(2000, refreshStats);
  const stopList = every(10000, refresh);
  return () => { stopEvents(); stopPolling(); stopList(); clearTimeout(pending); };
}
