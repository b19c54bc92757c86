// Networks: list, create NAT or isolated, start/stop, and one network's DHCP
// leases, reservations and port forwards.

import { del, enc, get, post } from "../api.js";
import { act, clear, confirmDialog, formData, h, showError, table } from "../ui.js";

export async function render(root, [selected]) {
  const networks = await get("/v1/networks");
  const current = networks.find((n) => n.name === selected) || networks[0];
  const rows = networks.map((n) => [
    h("a", { href: `#/networks/${enc(n.name)}` }, n.name), n.mode, n.state, n.bridge || "-", n.subnet || "-", n.autostart ? "yes" : "no",
    h("span", {}, n.state === "active"
      ? h("button", { onclick: (e) => act(e.target, () => post(`/v1/networks/${enc(n.name)}/destroy`), `${n.name} stopped`).then(() => render(root, [n.name])) }, "Stop")
      : h("button", { onclick: (e) => act(e.target, () => post(`/v1/networks/${enc(n.name)}/start`), `${n.name} started`).then(() => render(root, [n.name])) }, "Start"),
    " ", n.state !== "active" ? h("button", { class: "danger", onclick: async (e) => {
      if (!await confirmDialog(`Remove the network ${n.name}?`, { confirm: "Remove", danger: true })) return;
      await act(e.target, () => del(`/v1/networks/${enc(n.name)}`), `${n.name} removed`);
      render(root, []);
    } }, "Remove") : null)]);
  const form = h("form", { class: "card", "aria-label": "Create a network" }, h("h2", {}, "Create a network"),
    h("div", { class: "row" }, h("label", {}, "Name", h("input", { name: "name", required: true })),
      h("label", {}, "Mode", h("select", { name: "mode" }, h("option", { value: "nat" }, "NAT (guests reach out through the host)"),
        h("option", { value: "isolated" }, "Isolated (guests and host only)"))),
      h("label", {}, "Subnet (IPv4 CIDR; a free one if empty)", h("input", { name: "subnet", placeholder: "192.168.150.0/24" }))),
    h("label", { class: "inline" }, h("input", { type: "checkbox", name: "dhcp", checked: true }), "DHCP server"),
    h("label", { class: "inline" }, h("input", { type: "checkbox", name: "autostart", checked: true }), "Start with the daemon"),
    h("button", { class: "primary", type: "submit" }, "Create and start"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = formData(form);
    const spec = { name: f.name, mode: f.mode, autostart: f.autostart };
    if (f.subnet) spec.subnet = f.subnet;
    if (!f.dhcp) spec.dhcp = null;
    const made = await act(e.submitter, async () => {
      await post("/v1/networks", { spec });
      await post(`/v1/networks/${enc(f.name)}/start`);
      return true;
    }, `Network ${f.name} created and started`);
    if (made) location.hash = `#/networks/${enc(f.name)}`;
  });
  const detail = h("section");
  clear(root, h("h1", {}, "Networks"),
    table([{ title: "Name" }, { title: "Mode" }, { title: "State" }, { title: "Bridge" }, { title: "Subnet" }, { title: "Autostart" }, { title: "" }],
      rows, { label: "Networks", empty: "No networks yet." }), detail, form);
  if (current) await networkDetail(detail, current.name, () => render(root, [current.name]));
  return null;
}

async function networkDetail(box, name, reload) {
  const info = await get(`/v1/networks/${enc(name)}`);
  const spec = info.spec || {};
  let leases = [];
  if (info.state === "active") { try { leases = await get(`/v1/networks/${enc(name)}/leases`); } catch (err) { showError(err); } }
  const reservations = (spec.dhcp && spec.dhcp.hosts) || [];
  const forwards = spec.forwards || [];
  const resForm = h("form", { class: "card", "aria-label": "Add a DHCP reservation" }, h("h2", {}, "Add a DHCP reservation"),
    h("div", { class: "row" }, h("label", {}, "MAC", h("input", { name: "mac", required: true, placeholder: "52:54:00:12:34:56" })),
      h("label", {}, "IP address", h("input", { name: "ip", required: true })), h("label", {}, "Host name", h("input", { name: "name" }))),
    h("button", { class: "primary", type: "submit" }, "Add reservation"));
  resForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = formData(resForm);
    const entry = { mac: f.mac, ip: f.ip };
    if (f.name) entry.name = f.name;
    if (await act(e.submitter, () => post(`/v1/networks/${enc(name)}/update`, { action: "add", section: "dhcp-host", entry }), "Reservation added")) reload();
  });
  const fwdForm = h("form", { class: "card", "aria-label": "Add a port forward" }, h("h2", {}, "Add a port forward"),
    h("div", { class: "row" }, h("label", {}, "Protocol", h("select", { name: "proto" }, h("option", {}, "tcp"), h("option", {}, "udp"))),
      h("label", {}, "Host port", h("input", { name: "host_port", type: "number", min: 1, max: 65535, required: true })),
      h("label", {}, "Guest IP", h("input", { name: "guest_ip", required: true })),
      h("label", {}, "Guest port", h("input", { name: "guest_port", type: "number", min: 1, max: 65535 }))),
    h("button", { class: "primary", type: "submit", disabled: spec.mode !== "nat" }, "Add forward"));
  fwdForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = formData(fwdForm);
    const forward = { proto: f.proto, host_port: +f.host_port, guest_ip: f.guest_ip, guest_port: +(f.guest_port || f.host_port) };
    if (await act(e.submitter, () => post(`/v1/networks/${enc(name)}/forwards`, { action: "add", forward }), "Port forward added")) reload();
  });
  clear(box, h("h2", {}, `${name}: DHCP leases`),
    table([{ title: "MAC" }, { title: "IP address" }, { title: "Host name" }, { title: "Expires" }],
      leases.map((l) => [l.mac, l.ip || l.address || "-", l.hostname || "-", l.expiry ? new Date(l.expiry * 1000).toLocaleString() : "-"]),
      { label: "DHCP leases", empty: info.state === "active" ? "No leases." : "The network is not active." }),
    h("h2", {}, "Reservations"),
    table([{ title: "MAC" }, { title: "IP address" }, { title: "Name" }, { title: "" }], reservations.map((r) => [r.mac, r.ip, r.name || "-",
      h("button", { class: "danger", onclick: async (e) => {
        if (await act(e.target, () => post(`/v1/networks/${enc(name)}/update`, { action: "delete", section: "dhcp-host", entry: { mac: r.mac, ip: r.ip } }), "Reservation removed")) reload();
      } }, "Remove")]), { label: "DHCP reservations", empty: "No reservations." }),
    h("h2", {}, "Port forwards"),
    table([{ title: "Protocol" }, { title: "Host" }, { title: "Guest" }, { title: "" }], forwards.map((f) => [f.proto, `${f.host_address}:${f.host_port}`, `${f.guest_ip}:${f.guest_port || f.host_port}`,
      h("button", { class: "danger", onclick: async (e) => {
        if (await act(e.target, () => post(`/v1/networks/${enc(name)}/forwards`, { action: "delete", forward: f }), "Port forward removed")) reload();
      } }, "Remove")]), { label: "Port forwards", empty: "No port forwards." }),
    h("div", { class: "grid" }, resForm, fwdForm));
}
