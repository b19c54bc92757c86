// The New VM wizard, virt-manager's flow: install source -> OS -> memory and CPUs
// -> storage -> network -> name and finish.  It builds virt-install's options and
// sends them to POST /v1/install (the daemon parses them exactly as
// 'virtkit install' does), and shows the equivalent command line.

import { enc, get, post } from "../api.js";
import { act, bytes, clear, formData, h, showError } from "../ui.js";

const STEPS = ["Source", "Operating system", "Memory and CPUs", "Storage", "Network", "Finish"];

export async function render(root) {
  const [pools, networks] = await Promise.all([get("/v1/pools"), get("/v1/networks")]);
  const active = pools.filter((p) => p.state === "active");
  const volumes = {};
  for (const p of active) {
    try { volumes[p.name] = await get(`/v1/pools/${enc(p.name)}/volumes`); } catch { volumes[p.name] = []; }
  }
  const isoPool = active.find((p) => p.name === "iso") || active.find((p) => (volumes[p.name] || []).some(isIso)) || active[0];
  const diskPool = active.find((p) => p.name === "kvm-vm") || active.find((p) => p.name === "default") || active[0];
  const state = {
    step: 0, method: "cdrom", isoPool: isoPool && isoPool.name, iso: "", isoPath: "", location: "",
    importPool: diskPool && diskPool.name, importVolume: "", os: "generic", memory: 1024, vcpus: 1,
    storage: "new", diskPool: diskPool && diskPool.name, size: 10, existingPool: diskPool && diskPool.name,
    existingVolume: "", network: networks.find((n) => n.name === "default") ? "default" : (networks[0] ? networks[0].name : ""),
    name: "", graphics: "vnc",
  };
  const steps = h("ol", { class: "steps", "aria-label": "Steps" });
  const body = h("form", { class: "card", id: "wizard", "aria-live": "polite" });
  const errors = h("div");
  clear(root, h("h1", {}, "New virtual machine"), steps, errors, body);

  const poolOptions = (selected) => active.map((p) => h("option", { value: p.name, selected: p.name === selected }, p.name));
  const volumeOptions = (pool, filter, selected, byPath = false) => (volumes[pool] || []).filter(filter)
    .map((v) => h("option", { value: byPath ? v.path : v.name, selected: (byPath ? v.path : v.name) === selected }, `${v.name} (${bytes(v.capacity)})`));
  /** A pool select and the disk-image volumes of the chosen pool (refilled on change). */
  const poolAndVolume = (poolName, volumeName, pool, volume) => {
    const volumes = h("select", { name: volumeName, "aria-label": "Volume" }, volumeOptions(pool, (v) => !isIso(v), volume));
    const pools = h("select", { name: poolName, "aria-label": "Pool",
      onchange: () => clear(volumes, volumeOptions(pools.value, (v) => !isIso(v), "")) }, poolOptions(pool));
    return h("div", { class: "row" }, h("label", {}, "Pool", pools), h("label", {}, "Volume", volumes));
  };
  const radio = (name, value, label, checked) => h("label", { class: "inline" },
    h("input", { type: "radio", name, value, checked: checked === value }), label);

  const pages = [
    () => {
      const isoVolumes = h("select", { name: "iso", "aria-label": "ISO image" }, volumeOptions(state.isoPool, isIso, state.iso, true));
      const isoPoolSel = h("select", { name: "isoPool", "aria-label": "ISO pool", onchange: () => clear(isoVolumes, volumeOptions(isoPoolSel.value, isIso, "", true)) }, poolOptions(state.isoPool));
      return h("fieldset", {}, h("legend", {}, "How will the operating system be installed?"),
        radio("method", "cdrom", "Local install media (ISO image)", state.method),
        h("div", { class: "row" }, h("label", {}, "Pool", isoPoolSel), h("label", {}, "ISO image", isoVolumes),
          h("label", {}, "or a path on the host", h("input", { name: "isoPath", value: state.isoPath, placeholder: "/srv/iso/debian.iso" }))),
        radio("method", "location", "Network install (a URL or tree of an installer)", state.method),
        h("label", {}, "Location", h("input", { name: "location", value: state.location, placeholder: "https://deb.debian.org/debian/dists/stable/main/installer-amd64/" })),
        radio("method", "import", "Import an existing disk image", state.method),
        poolAndVolume("importPool", "importVolume", state.importPool, state.importVolume),
        radio("method", "pxe", "Network boot (PXE)", state.method));
    },
    () => {
      const list = h("datalist", { id: "os-list" });
      const input = h("input", { name: "os", value: state.os, list: "os-list", autocomplete: "off", "aria-describedby": "os-help",
        oninput: async () => {
          if (input.value.length < 2) return;
          try {
            const found = await get(`/v1/osinfo?filter=${enc(input.value)}`);
            clear(list, found.slice(0, 30).map((o) => h("option", { value: o.short_id }, o.name)));
          } catch { /* typing */ }
        } });
      const help = h("p", { class: "muted", id: "os-help" }, "Type part of a name (for example debian), or generic.");
      // the examples come from this host's osinfo database, so each one is accepted here
      get("/v1/osinfo").then((all) => {
        const known = new Set(all.map((o) => o.short_id));
        const wanted = ["debian12", "ubuntu22.04", "fedora38", "win11", "win10", "centos-stream9", "debian11"];
        const shown = wanted.filter((id) => known.has(id)).slice(0, 4);
        if (shown.length) help.textContent = `For example ${shown.join(", ")}, or generic.`;
      }).catch(() => { /* the database is optional */ });
      return h("fieldset", {}, h("legend", {}, "Operating system"),
        h("label", {}, "OS variant (osinfo short id; its recommended defaults apply)", input, list), help);
    },
    () => h("fieldset", {}, h("legend", {}, "Memory and CPUs"), h("div", { class: "row" },
      h("label", {}, "Memory (MiB)", h("input", { name: "memory", type: "number", min: 64, step: 64, value: state.memory, required: true })),
      h("label", {}, "vCPUs", h("input", { name: "vcpus", type: "number", min: 1, max: 256, value: state.vcpus, required: true })))),
    () => state.method === "import" ? h("p", {}, "The imported disk is the VM's storage.") : h("fieldset", {}, h("legend", {}, "Storage"),
      radio("storage", "new", "Create a new disk", state.storage),
      h("div", { class: "row" }, h("label", {}, "Pool", h("select", { name: "diskPool" }, poolOptions(state.diskPool))),
        h("label", {}, "Size (GiB)", h("input", { name: "size", type: "number", min: 1, step: 1, value: state.size }))),
      radio("storage", "existing", "Use an existing volume", state.storage),
      poolAndVolume("existingPool", "existingVolume", state.existingPool, state.existingVolume),
      radio("storage", "none", "No disk", state.storage)),
    () => h("fieldset", {}, h("legend", {}, "Network"),
      h("label", {}, "Network", h("select", { name: "network" },
        networks.map((n) => h("option", { value: n.name, selected: n.name === state.network }, `${n.name} (${n.mode}${n.state === "active" ? "" : ", inactive"})`)),
        h("option", { value: "", selected: !state.network }, "No network")))),
    () => h("fieldset", {}, h("legend", {}, "Ready to begin"),
      h("label", {}, "Name", h("input", { name: "name", value: state.name, required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.+\\-]*" })),
      h("label", {}, "Graphics", h("select", { name: "graphics" },
        h("option", { value: "vnc", selected: state.graphics === "vnc" }, "VNC (graphical console)"),
        h("option", { value: "none", selected: state.graphics === "none" }, "None (serial console only)"))),
      h("p", {}, "The same VM from the command line:"), h("pre", { class: "mono", id: "equivalent" }, commandLine(argv(state)))),
  ];

  const draw = () => {
    clear(steps, STEPS.map((label, i) => h("li", { "aria-current": i === state.step ? "step" : null }, `${i + 1}. ${label}`)));
    const back = h("button", { type: "button", disabled: state.step === 0, onclick: () => { save(); state.step--; draw(); } }, "Back");
    const next = state.step < STEPS.length - 1
      ? h("button", { class: "primary", type: "submit" }, "Forward")
      : h("button", { class: "primary", type: "submit", id: "finish" }, "Finish");
    clear(body, pages[state.step](), h("div", { class: "toolbar" }, back, h("span", { class: "spacer" }), next));
    const first = body.querySelector("input, select");
    if (first) first.focus();
    body.addEventListener("input", () => {
      const eq = document.getElementById("equivalent");
      if (eq) { save(); eq.textContent = commandLine(argv(state)); }
    });
  };
  const save = () => {
    const f = formData(body);
    for (const [key, value] of Object.entries(f)) if (key in state) state[key] = value;
  };

  body.addEventListener("submit", async (e) => {
    e.preventDefault();
    save();
    clear(errors);
    const problem = check(state);
    if (problem) { showError({ plain: problem }, errors); return; }
    if (state.step < STEPS.length - 1) { state.step++; draw(); return; }
    const result = await act(e.submitter, () => post("/v1/install", { argv: argv(state) }), (r) => `${r.name} is starting`);
    if (result) location.hash = `#/vm/${enc(result.name)}/${state.graphics === "vnc" ? "console" : "serial"}`;
  });
  draw();
  return null;

  function check(s) {
    if (s.step === 0) {
      if (s.method === "cdrom" && !s.iso && !s.isoPath) return "Choose an ISO image, or give its path.";
      if (s.method === "location" && !s.location) return "Give the location of the installer.";
      if (s.method === "import" && !s.importVolume) return "Choose the disk image to import.";
    }
    if (s.step === 2 && (!(+s.memory >= 64) || !(+s.vcpus >= 1))) return "Memory must be at least 64 MiB and vCPUs at least 1.";
    if (s.step === 3 && s.method !== "import") {
      if (s.storage === "new" && !(+s.size > 0)) return "Give the new disk's size in GiB.";
      if (s.storage === "existing" && !s.existingVolume) return "Choose the existing volume.";
    }
    if (s.step === 5 && !s.name) return "Give the VM a name.";
    return null;
  }
}

function isIso(volume) { return volume.name.toLowerCase().endsWith(".iso") || volume.format === "iso"; }

/** virt-install's options for the wizard's answers. */
export function argv(s) {
  const out = ["--name", s.name || "NAME", "--memory", String(s.memory), "--vcpus", String(s.vcpus), "--os-variant", s.os || "generic"];
  if (s.method === "cdrom") out.push("--cdrom", s.isoPath || s.iso);
  if (s.method === "location") out.push("--location", s.location);
  if (s.method === "pxe") out.push("--pxe");
  if (s.method === "import") out.push("--import", "--disk", `vol=${s.importPool}/${s.importVolume}`);
  else if (s.storage === "new") out.push("--disk", `pool=${s.diskPool},size=${s.size}`);
  else if (s.storage === "existing") out.push("--disk", `vol=${s.existingPool}/${s.existingVolume}`);
  else out.push("--nodisks");
  if (s.network) out.push("--network", `network=${s.network}`); else out.push("--nonetworks");
  out.push("--graphics", s.graphics, "--noautoconsole");
  return out;
}

function commandLine(args) {
  return "virtkit install " + args.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(" ");
}
