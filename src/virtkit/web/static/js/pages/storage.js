// Storage: pools with capacity bars; create a directory, ISO or LVM pool;
// a pool's volumes: create, delete, upload (an ISO, say) with progress.

import { del, enc, get, post, put, upload } from "../api.js";
import { act, bytes, clear, confirmDialog, flash, formData, h, showError, table, usageBar } from "../ui.js";

export async function render(root, [selected]) {
  const pools = await get("/v1/pools");
  const current = pools.find((p) => p.name === selected) || pools[0];
  const poolRows = pools.map((p) => [
    h("a", { href: `#/storage/${enc(p.name)}`, "aria-current": current && p.name === current.name ? "true" : null }, p.name),
    p.type, p.state === "active" ? "active" : "inactive", p.target,
    h("div", { style: "min-width:180px" }, usageBar(p.allocation, p.capacity, `${p.name} usage`),
      h("span", { class: "muted" }, `${bytes(p.allocation)} of ${bytes(p.capacity)}, ${bytes(p.available)} free`)),
    p.volumes ?? "-",
    h("span", {}, p.state === "active"
      ? h("button", { onclick: (e) => act(e.target, () => post(`/v1/pools/${enc(p.name)}/destroy`), `${p.name} stopped`).then(() => render(root, [p.name])) }, "Stop")
      : h("button", { onclick: (e) => act(e.target, () => post(`/v1/pools/${enc(p.name)}/start`), `${p.name} started`).then(() => render(root, [p.name])) }, "Start"),
    " ", p.state !== "active" ? h("button", { class: "danger", onclick: async (e) => {
      if (!await confirmDialog(`Remove the pool ${p.name}'s definition? Its files are kept.`, { confirm: "Remove", danger: true })) return;
      await act(e.target, () => del(`/v1/pools/${enc(p.name)}`), `${p.name} removed`);
      render(root, []);
    } }, "Remove") : null)]);

  const createForm = h("form", { class: "card", "aria-label": "Create a pool" }, h("h2", {}, "Create a pool"),
    h("div", { class: "row" },
      h("label", {}, "Name", h("input", { name: "name", required: true, placeholder: "kvm-vm" })),
      h("label", {}, "Type", h("select", { name: "type" }, h("option", { value: "dir" }, "Directory"),
        h("option", { value: "iso" }, "ISO images (directory)"), h("option", { value: "logical" }, "LVM volume group"))),
      h("label", {}, "Target (folder, or volume group name)", h("input", { name: "target", required: true, placeholder: "/var/lib/virtkit/kvm-vm" })),
      h("label", {}, "Source devices (LVM, comma separated)", h("input", { name: "devices", placeholder: "/dev/sdb" }))),
    h("button", { class: "primary", type: "submit" }, "Create pool"));
  createForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = formData(createForm);
    const spec = { name: f.name, type: f.type, target: f.target, autostart: true };
    if (f.devices.trim()) spec.source_devices = f.devices.split(",").map((d) => d.trim()).filter(Boolean);
    const made = await act(e.submitter, async () => {
      await post("/v1/pools", { spec });
      try {
        await post(`/v1/pools/${enc(f.name)}/build`);
        await post(`/v1/pools/${enc(f.name)}/start`);
      } catch (err) {
        await del(`/v1/pools/${enc(f.name)}`).catch(() => {});
        throw err;
      }
      return true;
    }, `Pool ${f.name} created and started`);
    if (made) location.hash = `#/storage/${enc(f.name)}`;
  });

  const volumeBox = h("section", { "aria-labelledby": "vol-h" });
  clear(root, h("h1", {}, "Storage"),
    table([{ title: "Pool" }, { title: "Type" }, { title: "State" }, { title: "Target" }, { title: "Usage" }, { title: "Volumes", num: true }, { title: "" }],
      poolRows, { label: "Storage pools", empty: "No pools yet." }),
    volumeBox, createForm);
  if (current) await volumes(volumeBox, current, () => render(root, [current.name]));
  return null;
}

async function volumes(box, pool, reload) {
  clear(box, h("h2", { id: "vol-h" }, `Volumes in ${pool.name}`));
  if (pool.state !== "active") { box.append(h("p", { class: "muted" }, "Start the pool to see its volumes.")); return; }
  let list = [];
  try { list = await get(`/v1/pools/${enc(pool.name)}/volumes`); } catch (err) { showError(err, box); return; }
  const rows = list.map((v) => [v.name, v.format, bytes(v.capacity), bytes(v.allocation), (v.used_by || []).join(", ") || "-",
    h("button", { class: "danger", "aria-label": `Delete ${v.name}`, onclick: async (e) => {
      if (!await confirmDialog(`Delete the volume ${v.name}? Its data is lost.`, { confirm: "Delete", danger: true })) return;
      await act(e.target, () => del(`/v1/pools/${enc(pool.name)}/volumes/${enc(v.name)}`), `${v.name} deleted`);
      reload();
    } }, "Delete")]);
  const newForm = h("form", { class: "card", "aria-label": "New volume" }, h("h2", {}, "New volume"),
    h("div", { class: "row" }, h("label", {}, "Name", h("input", { name: "name", required: true, placeholder: "disk1.qcow2" })),
      h("label", {}, "Size", h("input", { name: "capacity", required: true, placeholder: "20G" })),
      h("label", {}, "Format", h("select", { name: "format" }, h("option", { value: "qcow2" }, "qcow2"), h("option", { value: "raw" }, "raw")))),
    h("button", { class: "primary", type: "submit" }, "Create volume"));
  newForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = formData(newForm);
    if (await act(e.submitter, () => post(`/v1/pools/${enc(pool.name)}/volumes`, f), `${f.name} created`)) reload();
  });
  const fileInput = h("input", { type: "file", name: "file", required: true, "aria-label": "File to upload" });
  const bar = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const percent = h("span", { class: "muted", "aria-live": "polite", id: "upload-status" });
  const uploadForm = h("form", { class: "card", "aria-label": "Upload a file" }, h("h2", {}, "Upload (an ISO image, a disk image)"),
    fileInput, h("label", {}, "Volume name (default: the file's name)", h("input", { name: "name" })), bar, percent,
    h("button", { class: "primary", type: "submit" }, "Upload"));
  uploadForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = fileInput.files[0];
    if (!file) return;
    const name = formData(uploadForm).name || file.name;
    bar.hidden = false;
    e.submitter.disabled = true;
    try {
      await upload(`/v1/pools/${enc(pool.name)}/volumes/${enc(name)}/upload`, file, (fraction) => {
        bar.value = fraction;
        percent.textContent = `${Math.round(fraction * 100)} %`;
      });
      percent.textContent = "done";
      flash(`${name} uploaded (${bytes(file.size)})`);
      reload();
    } catch (err) {
      percent.textContent = "failed";
      showError(err);
    } finally {
      e.submitter.disabled = false;
    }
  });
  box.append(table([{ title: "Name" }, { title: "Format" }, { title: "Capacity" }, { title: "Allocation" }, { title: "Used by" }, { title: "" }],
    rows, { label: `Volumes in ${pool.name}`, empty: "No volumes in this pool." }), h("div", { class: "grid" }, newForm, uploadForm));
}

export { put };
