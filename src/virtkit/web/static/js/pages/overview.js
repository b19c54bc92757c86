// Host overview: what the host is, which accelerator and why, capacity and
// what is allocated, KSM.

import { get, put } from "../api.js";
import { act, clear, every, h, mib, table, usageBar } from "../ui.js";

export async function render(root) {
  const body = h("div", { class: "grid" });
  const checks = h("section", { "aria-labelledby": "checks-h" });
  clear(root, h("h1", {}, "Host"), body, checks);
  get("/v1/host/check").then((results) => clear(checks, h("h2", { id: "checks-h" }, "Host check"),
    table([{ title: "Check" }, { title: "Result" }, { title: "Detail" }, { title: "What to do" }],
      results.map((c) => [c.name, h("span", { class: `check ${c.status.toLowerCase()}` }, c.status), c.detail, c.fix || ""]),
      { label: "Host check" }))).catch(() => {});
  const refresh = async () => {
    const [host, capacity, ksm] = await Promise.all([get("/v1/host"), get("/v1/host/capacity"),
      get("/v1/host/ksm").catch(() => null)]);
    const alloc = (what, used, limit, unit) => h("div", {},
      h("div", { class: "toolbar" }, h("strong", {}, what), h("span", { class: "spacer" }),
        h("span", { class: "muted" }, `${unit(used)} of ${unit(limit)}`)),
      usageBar(used, limit, what));
    clear(body,
      h("section", { class: "card", "aria-labelledby": "host-h" },
        h("h2", { id: "host-h" }, host.hostname),
        h("dl", { class: "kv" },
          h("dt", {}, "CPUs"), h("dd", {}, host.cpus),
          h("dt", {}, "Memory"), h("dd", {}, mib(host.memory_mib)),
          h("dt", {}, "Kernel"), h("dd", {}, host.kernel),
          h("dt", {}, "QEMU"), h("dd", {}, `${host.qemu.version} (${host.qemu.path})`),
          h("dt", {}, "Accelerator"), h("dd", { id: "accelerator" }, host.accelerator)),
        h("p", { class: "muted" }, host.accelerator_reason)),
      h("section", { class: "card", "aria-labelledby": "cap-h" },
        h("h2", { id: "cap-h" }, "Capacity"),
        alloc("Running vCPUs", capacity.running.vcpus, capacity.limits.vcpus, String),
        alloc("Running memory", capacity.running.memory_mib, capacity.limits.memory_mib, mib),
        alloc("Defined memory", capacity.defined.memory_mib, capacity.limits.memory_mib, mib),
        h("p", { class: "muted" },
          `${capacity.running.domains} running of ${capacity.defined.domains} defined; ` +
          `overcommit ratios: CPU ${capacity.ratios.cpu}, memory ${capacity.ratios.memory}`)),
      ksm ? h("section", { class: "card", "aria-labelledby": "ksm-h" },
        h("h2", { id: "ksm-h" }, "Kernel same-page merging (KSM)"),
        h("dl", { class: "kv" },
          h("dt", {}, "State"), h("dd", {}, ksm.enabled ? "merging" : "off"),
          h("dt", {}, "Saved"), h("dd", {}, mib(ksm.saved_mib))),
        h("button", { onclick: (e) => act(e.target, () => put("/v1/host/ksm", { action: ksm.enabled ? "off" : "on" }),
          ksm.enabled ? "KSM stopped" : "KSM started") }, ksm.enabled ? "Stop KSM" : "Start KSM")) : null);
  };
  await refresh();
  return every(5000, refresh);
}
