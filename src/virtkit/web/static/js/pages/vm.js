// One VM: overview with live graphs, the graphical console (noVNC), the serial
// console (xterm.js), hardware (disks, NICs, CD media), snapshots and clone.

import { DELETE_QUERY, del, domainPath, enc, get, post, wsUrl } from "../api.js";
import { act, bytes, clear, confirmDialog, every, flash, formData, h, mib, showError, stateBadge, table, time } from "../ui.js";
import { onEvent } from "../feed.js";

const TABS = [["overview", "Overview"], ["console", "Console"], ["serial", "Serial console"],
  ["hardware", "Hardware"], ["snapshots", "Snapshots"], ["clone", "Clone"]];
const CONSOLE_TABS = ["console", "serial"];

export async function render(root, [name, tab = "overview"]) {
  if (!name) { location.hash = "#/vms"; return null; }
  let info = await get(domainPath(name));
  const header = h("div", { class: "toolbar" });
  const tabs = h("div", { class: "tabs", role: "tablist", "aria-label": "VM sections" },
    TABS.map(([key, label]) => h("a", { role: "tab", href: `#/vm/${enc(name)}/${key}`, "aria-selected": String(key === tab), id: `tab-${key}` }, label)));
  const panel = h("section", { role: "tabpanel", "aria-labelledby": `tab-${tab}` });
  clear(root, header, tabs, panel);

  // the console tabs are there only while a QEMU runs (a shut-off VM has no console)
  const showConsoleTabs = () => {
    const live = info.state === "running" || info.state === "paused";
    for (const key of CONSOLE_TABS) tabs.querySelector(`#tab-${key}`).hidden = !live && key !== tab;
  };
  const drawHeader = () => {
    clear(header, h("h1", {}, name), stateBadge(info.state), h("span", { class: "spacer" }), actions(name, info));
    showConsoleTabs();
  };
  drawHeader();
  const stopEvents = onEvent(async (event) => {
    if (event.domain !== name && event.uuid !== info.uuid) return;
    try { info = await get(domainPath(name)); drawHeader(); } catch { /* deleted */ }
  });
  const renderTab = { overview, console: vncConsole, serial, hardware, snapshots, clone }[tab] || overview;
  const stopTab = await renderTab(panel, name, info);
  return () => { stopEvents(); if (stopTab) stopTab(); };
}

function actions(name, info) {
  const running = info.state === "running";
  const paused = info.state === "paused";
  const go = (label, path, ok, opts = {}) => h("button", { class: opts.danger ? "danger" : null, onclick: async (e) => {
    if (opts.confirm && !await confirmDialog(opts.confirm, { confirm: label, danger: true })) return;
    await act(e.target, () => (opts.method === "DELETE" ? del(domainPath(name, DELETE_QUERY)) : post(domainPath(name, path), {})), ok);
    if (opts.method === "DELETE") location.hash = "#/vms";
  } }, label);
  if (info.state === "shutoff" || info.state === "crashed") {
    return [go("Start", "/start", `${name} started`),
      go("Delete", "", `${name} deleted`, { danger: true, method: "DELETE", confirm: `Delete the VM ${name}? Its disks are kept; its snapshot list and firmware variables go.` })];
  }
  return [running ? go("Pause", "/suspend", `${name} paused`) : null,
    paused ? go("Resume", "/resume", `${name} resumed`) : null,
    go("Reboot", "/reboot", `${name} rebooting`),
    go("Shut down", "/shutdown", `${name} is shutting down`),
    go("Force off", "/destroy", `${name} stopped`, { danger: true, confirm: `Pull the plug on ${name}? Unsaved guest data is lost.` })];
}

// -- overview ---------------------------------------------------------------------
async function overview(panel, name, info) {
  const spec = info.spec;
  const cpuCanvas = h("canvas", { class: "graph", width: 600, height: 120, role: "img", "aria-label": "CPU usage graph" });
  const memCanvas = h("canvas", { class: "graph", width: 600, height: 120, role: "img", "aria-label": "Memory usage graph" });
  const cpuNow = h("span", { id: "cpu-now" }, "-");
  const memNow = h("span", { id: "mem-now" }, "-");
  clear(panel, h("div", { class: "grid" },
    h("div", { class: "card" }, h("h2", {}, "Details"), h("dl", { class: "kv" },
      h("dt", {}, "UUID"), h("dd", { class: "mono" }, info.uuid),
      info.host ? [h("dt", {}, "Host"), h("dd", { id: "vm-host" }, info.host)] : null,
      h("dt", {}, "vCPUs"), h("dd", {}, info.vcpus),
      h("dt", {}, "Memory"), h("dd", {}, mib(info.memory_mib)),
      h("dt", {}, "Machine"), h("dd", {}, `${spec.machine}, ${spec.firmware}`),
      h("dt", {}, "Accelerator"), h("dd", {}, info.accelerator || spec.accelerator),
      h("dt", {}, "QEMU pid"), h("dd", {}, info.pid || "-"),
      h("dt", {}, "Graphics"), h("dd", {}, info.vnc ? `VNC ${info.vnc.display}` : spec.graphics.type),
      h("dt", {}, "Autostart"), h("dd", {}, info.autostart ? "yes" : "no"),
      h("dt", {}, "Description"), h("dd", {}, spec.description || spec.title || "-"))),
    h("div", { class: "card" }, h("h2", {}, "CPU ", cpuNow), cpuCanvas, h("h2", {}, "QEMU memory on the host ", memNow), memCanvas)));
  const cpuSeries = [];
  const memSeries = [];
  let last = null;
  const sample = async () => {
    const [stats] = await get(`/v1/domstats?domain=${enc(name)}&groups=state,cpu-total,balloon`);
    if (!stats || stats.state.state !== "running") { cpuNow.textContent = "(not running)"; return; }
    const now = performance.now() / 1000;
    if (last) {
      const pct = Math.max(0, (100 * (stats.cpu.time - last.time)) / (now - last.at));
      cpuSeries.push(pct);
      cpuNow.textContent = `${pct.toFixed(1)} %`;
    }
    last = { time: stats.cpu.time, at: now };
    if (stats.balloon && stats.balloon.rss) {
      memSeries.push(stats.balloon.rss / 1024);
      // QEMU's resident memory includes its own overhead, so it may exceed the guest's RAM
      memNow.textContent = `${(stats.balloon.rss / 1024).toFixed(0)} MiB (guest RAM ${info.memory_mib} MiB)`;
    }
    for (const series of [cpuSeries, memSeries]) while (series.length > 90) series.shift();
    plot(cpuCanvas, cpuSeries, Math.max(100, info.vcpus * 100), "%");
    plot(memCanvas, memSeries, Math.max(info.memory_mib, ...memSeries) * 1.2, "MiB");
  };
  await sample().catch(() => {});
  return every(2000, sample);
}

function plot(canvas, series, top, unit) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = "#e5e7eb";
  for (let i = 1; i < 4; i++) { ctx.beginPath(); ctx.moveTo(0, (height * i) / 4); ctx.lineTo(width, (height * i) / 4); ctx.stroke(); }
  ctx.fillStyle = "#6b7280";
  ctx.font = "11px sans-serif";
  ctx.fillText(`${top.toFixed(0)} ${unit}`, 4, 12);
  if (series.length < 2) return;
  ctx.strokeStyle = "#2563eb";
  ctx.lineWidth = 2;
  ctx.beginPath();
  series.forEach((v, i) => {
    const x = (width * i) / 89;
    const y = height - (Math.min(v, top) / top) * (height - 4) - 2;
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
}

// -- graphical console (noVNC) ----------------------------------------------------
async function vncConsole(panel, name, info) {
  if (info.state !== "running" && info.state !== "paused") {
    clear(panel, h("p", {}, "The VM is not running: start it to see its screen."));
    return null;
  }
  if (!info.vnc) {
    clear(panel, h("p", {}, "This VM has no graphical display (graphics: none). Use the serial console."));
    return null;
  }
  const { default: RFB } = await import("../../vendor/novnc/core/rfb.js");
  const screen = h("div", { class: "vnc-screen", id: "vnc-screen" });
  const status = h("span", { class: "muted", id: "vnc-status", "aria-live": "polite" }, "connecting…");
  let rfb = null;
  clear(panel, h("div", { class: "toolbar" }, status, h("span", { class: "spacer" }),
    h("button", { onclick: () => rfb && rfb.sendCtrlAltDel() }, "Send Ctrl+Alt+Del"),
    h("button", { onclick: () => screen.requestFullscreen && screen.requestFullscreen() }, "Full screen")), screen);
  rfb = new RFB(screen, wsUrl(domainPath(name, "/vnc/websocket")), { wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.addEventListener("connect", () => { status.textContent = "connected"; rfb.focus(); });
  rfb.addEventListener("disconnect", (e) => { status.textContent = e.detail.clean ? "disconnected" : "connection lost"; });
  rfb.addEventListener("credentialsrequired", async () => {
    const input = h("input", { type: "password", "aria-label": "VNC password" });
    if (await confirmDialog("This display has a VNC password.", { confirm: "Connect", extra: h("label", {}, "Password", input) })) {
      rfb.sendCredentials({ password: input.value });
    }
  });
  return () => { try { rfb.disconnect(); } catch { /* closed */ } };
}

// -- serial console (xterm.js) ----------------------------------------------------
async function serial(panel, name, info) {
  if (info.state !== "running" && info.state !== "paused") {
    clear(panel, h("p", {}, "The VM is not running: start it to use its serial console."));
    return null;
  }
  const [{ Terminal }, { FitAddon }] = await Promise.all([
    import("../../vendor/xterm/xterm.mjs"), import("../../vendor/xterm/addon-fit.mjs")]);
  const box = h("div", { class: "console-box", id: "serial-terminal" });
  const status = h("span", { class: "muted", "aria-live": "polite", id: "serial-status" }, "connecting…");
  let socket = null;
  const connect = (force) => {
    if (socket) socket.close();
    socket = new WebSocket(wsUrl(domainPath(name, `/console${force ? "?force=1" : ""}`)));
    socket.binaryType = "arraybuffer";
    socket.onopen = () => { status.textContent = "connected (the terminal has the keyboard)"; term.focus(); term.write("\r"); socket.send("\r"); };
    socket.onmessage = (m) => term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data));
    socket.onclose = () => { status.textContent = "disconnected"; };
  };
  clear(panel, h("div", { class: "toolbar" }, status, h("span", { class: "spacer" }),
    h("button", { onclick: () => connect(true) }, "Reconnect (take over)")), box);
  const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const encoder = new TextEncoder();
  term.onData((data) => { if (socket && socket.readyState === 1) socket.send(encoder.encode(data)); });
  connect(false);
  const resize = () => fit.fit();
  window.addEventListener("resize", resize);
  return () => { window.removeEventListener("resize", resize); if (socket) socket.close(); term.dispose(); };
}

// -- hardware -----------------------------------------------------------------------
async function hardware(panel, name, info) {
  const running = info.state === "running" || info.state === "paused";
  const scope = { live: running, config: true };
  const draw = async () => {
    info = await get(domainPath(name));
    const [disks, pools, networks] = await Promise.all([get(domainPath(name, "/disks")), get("/v1/pools"), get("/v1/networks")]);
    const volumeSelect = h("select", { name: "volume", "aria-label": "Volume" });
    const poolSelect = h("select", { name: "pool", "aria-label": "Pool", onchange: () => fillVolumes(poolSelect.value, volumeSelect) },
      h("option", { value: "" }, "(a path instead)"), pools.map((p) => h("option", { value: p.name }, p.name)));
    const diskForm = h("form", { class: "card", "aria-label": "Add a disk" }, h("h2", {}, "Add a disk"),
      h("div", { class: "row" }, h("label", {}, "Pool", poolSelect), h("label", {}, "Volume", volumeSelect),
        h("label", {}, "or path", h("input", { name: "path", placeholder: "/var/lib/virtkit/images/extra.qcow2" })),
        h("label", {}, "Bus", h("select", { name: "bus" }, h("option", { value: "virtio" }, "virtio"), h("option", { value: "scsi" }, "scsi")))),
      h("button", { class: "primary", type: "submit" }, "Add disk"));
    diskForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = formData(diskForm);
      const disk = f.pool ? { pool: f.pool, volume: f.volume, bus: f.bus } : { path: f.path, bus: f.bus };
      await act(e.submitter, () => post(domainPath(name, "/disks"), { disk, ...scope }), (r) => `Disk ${r.target} added`);
      draw();
    });
    const nicForm = h("form", { class: "card", "aria-label": "Add a network interface" }, h("h2", {}, "Add a network interface"),
      h("div", { class: "row" }, h("label", {}, "Network", h("select", { name: "network" }, networks.map((n) => h("option", { value: n.name }, n.name)))),
        h("label", {}, "Model", h("select", { name: "model" }, ["virtio", "e1000e", "rtl8139"].map((m) => h("option", { value: m }, m))))),
      h("button", { class: "primary", type: "submit", disabled: !networks.length }, "Add interface"));
    nicForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = formData(nicForm);
      await act(e.submitter, () => post(domainPath(name, "/interfaces"), { interface: { type: "network", network: f.network, model: f.model }, ...scope }), (r) => `Interface ${r.mac} added`);
      draw();
    });
    const diskRows = disks.map((d) => [d.target, d.device, d.bus || "-", d.path || "(empty)",
      d.device === "cdrom"
        ? h("span", {}, h("button", { onclick: (e) => changeMedia(e.target, d.target, pools) }, "Change media"), " ",
          d.path ? h("button", { onclick: (e) => act(e.target, () => post(domainPath(name, "/media"), { target: d.target, path: null, ...scope }), "Media ejected").then(draw) }, "Eject") : null)
        : h("button", { class: "danger", onclick: async (e) => {
          if (!await confirmDialog(`Remove disk ${d.target} from ${name}? The image file is kept.`, { confirm: "Remove", danger: true })) return;
          await act(e.target, () => post(domainPath(name, "/disks/detach"), { target: d.target, ...scope }), (r) => `Disk ${d.target} removed${r.pending ? " (the guest has not released it yet)" : ""}`);
          draw();
        } }, "Remove")]);
    const nics = info.spec.nics || [];
    const nicRows = nics.map((n) => [n.mac || "-", n.network || n.bridge || n.type || "-", n.model || "-",
      h("button", { class: "danger", onclick: async (e) => {
        await act(e.target, () => post(domainPath(name, "/interfaces/detach"), { mac: n.mac, ...scope }), `Interface ${n.mac} removed`);
        draw();
      } }, "Remove")]);
    clear(panel, h("h2", {}, "Disks"), table([{ title: "Target" }, { title: "Device" }, { title: "Bus" }, { title: "Source" }, { title: "" }], diskRows, { label: "Disks" }),
      h("h2", {}, "Network interfaces"), table([{ title: "MAC" }, { title: "Network" }, { title: "Model" }, { title: "" }], nicRows, { label: "Network interfaces", empty: "No network interfaces." }),
      h("div", { class: "grid" }, diskForm, nicForm));
    if (pools.length) { poolSelect.value = pools[0].name; fillVolumes(pools[0].name, volumeSelect); }
  };
  const changeMedia = async (button, target, pools) => {
    const volumes = [];
    for (const pool of pools) {
      try { for (const v of await get(`/v1/pools/${enc(pool.name)}/volumes`)) if (v.name.toLowerCase().endsWith(".iso")) volumes.push(v); } catch { /* inactive */ }
    }
    const select = h("select", { "aria-label": "ISO image" }, volumes.map((v) => h("option", { value: v.path }, `${v.pool || ""} ${v.name}`)));
    const path = h("input", { placeholder: "or a path on the host", "aria-label": "ISO path" });
    if (!await confirmDialog(`New medium for ${target}`, { confirm: "Insert", extra: h("div", {}, h("label", {}, "ISO volume", select), h("label", {}, "Path", path)) })) return;
    await act(button, () => post(domainPath(name, "/media"), { target, path: path.value || select.value, ...scope }), "Media changed");
    draw();
  };
  await draw();
  return null;
}

async function fillVolumes(pool, select) {
  clear(select);
  if (!pool) return;
  try {
    const volumes = await get(`/v1/pools/${enc(pool)}/volumes`);
    // a volume another VM uses is shown but cannot be chosen (the daemon refuses it too)
    for (const v of volumes) {
      const users = v.used_by || [];
      const label = `${v.name} (${bytes(v.capacity)})${users.length ? ` - used by ${users.join(", ")}` : ""}`;
      select.append(h("option", { value: v.name, disabled: users.length > 0 }, label));
    }
    const free = [...select.options].find((o) => !o.disabled);
    if (free) select.value = free.value;
  } catch (err) { showError(err); }
}

// -- snapshots ----------------------------------------------------------------------
async function snapshots(panel, name) {
  const draw = async () => {
    const list = await get(domainPath(name, "/snapshots"));
    const form = h("form", { class: "card", "aria-label": "Take a snapshot" }, h("h2", {}, "Take a snapshot"),
      h("div", { class: "row" }, h("label", {}, "Name", h("input", { name: "name", placeholder: "(a time stamp)" })),
        h("label", {}, "Description", h("input", { name: "description" }))),
      h("label", { class: "inline" }, h("input", { type: "checkbox", name: "disk_only" }), "Disks only (no memory state)"),
      h("button", { class: "primary", type: "submit" }, "Take snapshot"));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = formData(form);
      const body = { description: f.description, disk_only: f.disk_only };
      if (f.name) body.name = f.name;
      await act(e.submitter, () => post(domainPath(name, "/snapshots"), body), (r) => `Snapshot ${r.name} taken`);
      draw();
    });
    const rows = list.map((s) => [s.name, s.created ? new Date(s.created * 1000).toLocaleString() : "-",
      s.state || "-", s.kind || "-", s.current ? "yes" : "", s.description || "",
      h("span", {}, h("button", { onclick: async (e) => {
        if (!await confirmDialog(`Revert ${name} to ${s.name}? Changes since then are lost.`, { confirm: "Revert", danger: true })) return;
        await act(e.target, () => post(domainPath(name, `/snapshots/${enc(s.name)}/revert`), {}), `Reverted to ${s.name}`);
        draw();
      } }, "Revert"), " ", h("button", { class: "danger", onclick: async (e) => {
        if (!await confirmDialog(`Delete snapshot ${s.name}?`, { confirm: "Delete", danger: true })) return;
        await act(e.target, () => del(domainPath(name, `/snapshots/${enc(s.name)}`)), `Snapshot ${s.name} deleted`);
        draw();
      } }, "Delete"))]);
    clear(panel, table([{ title: "Name" }, { title: "Created" }, { title: "State" }, { title: "Kind" }, { title: "Current" }, { title: "Description" }, { title: "" }],
      rows, { label: "Snapshots", empty: "No snapshots." }), form);
  };
  await draw();
  return null;
}

// -- clone ------------------------------------------------------------------------
async function clone(panel, name, info) {
  const form = h("form", { class: "card", "aria-label": "Clone" }, h("h2", {}, `Clone ${name}`),
    h("p", { class: "muted" }, "The clone gets new disks (copies, or thin overlays when linked), new MAC addresses and a new UUID. The VM must be shut off or paused."),
    h("label", {}, "Name of the clone", h("input", { name: "name", required: true, value: `${name}-clone` })),
    h("label", { class: "inline" }, h("input", { type: "checkbox", name: "linked" }), "Linked clone (a qcow2 overlay on the original's disk)"),
    h("button", { class: "primary", type: "submit" }, "Clone"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = formData(form);
    const result = await act(e.submitter, () => post(domainPath(name, "/clone"), { name: f.name, auto: true, linked: f.linked, files: [], macs: [] }),
      (r) => `Clone ${r.name} created`);
    if (result) location.hash = `#/vm/${enc(result.name)}`;
  });
  clear(panel, info.state === "running" ? h("p", { class: "muted" }, "Shut the VM down (or pause it) before cloning.") : null, form);
  return null;
}

export { flash, time };
