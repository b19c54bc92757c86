// The cluster's hosts (docs/cluster.md): what `virtkit cluster list` and
// `virtkit cluster status` show -- each host's state, role, capacity, VMs and last
// heartbeat, and etcd's health, quorum and leader.  Outside a cluster it says so.

import { get } from "../api.js";
import { clear, every, h, stateBadge, table } from "../ui.js";

function ago(epoch) {
  if (!epoch) return null;
  const seconds = Math.max(0, Date.now() / 1000 - epoch);
  return seconds < 120 ? `${seconds.toFixed(1)} s ago` : new Date(epoch * 1000).toLocaleString();
}

function capacity(row) {
  const c = row.capacity;
  return c ? `${c.cpus} CPU, ${Math.floor(c.memory_mib / 1024)} GiB` : "-";
}

export async function render(root) {
  const statusBox = h("section", { class: "card", "aria-labelledby": "cluster-h" });
  const hostsBox = h("section", { "aria-labelledby": "hosts-h" });
  const membersBox = h("section", { "aria-labelledby": "members-h" });
  clear(root, h("h1", {}, "Cluster hosts"), statusBox, hostsBox, membersBox);

  const refresh = async () => {
    const status = await get("/v1/cluster");
    if (!status.configured) {
      clear(statusBox, h("h2", { id: "cluster-h" }, "Cluster"),
        h("p", { class: "muted" }, "This host is in no cluster. Make one with `virtkit cluster init`, or join one with `virtkit cluster join URI`."));
      clear(hostsBox);
      clear(membersBox);
      return;
    }
    const hosts = await get("/v1/cluster/hosts");
    clear(statusBox, h("h2", { id: "cluster-h" }, `Cluster ${status.cluster}`),
      h("dl", { class: "kv", "aria-label": "Cluster status" },
        h("dt", {}, "This host"), h("dd", {}, `${status.host} (${status.role})`),
        h("dt", {}, "Leader"), h("dd", { id: "cluster-leader" }, status.leader || "none"),
        h("dt", {}, "Voters"), h("dd", {}, `${status.healthy}/${status.voters} healthy, quorum ${status.quorum}`),
        h("dt", {}, "Quorum"), h("dd", { id: "cluster-quorum", class: status.has_quorum ? null : "danger" }, status.has_quorum ? "yes" : "NO")),
      (status.vm_problems || []).map((p) => h("p", { class: "muted" }, `Warning: ${p}`)));
    clear(hostsBox, h("h2", { id: "hosts-h" }, "Hosts"),
      table([{ title: "Host" }, { title: "Address" }, { title: "State" }, { title: "Role" }, { title: "Capacity" },
        { title: "VMs (run/def)", num: true }, { title: "Last heartbeat" }],
      hosts.map((r) => [r.name + (r.name === status.host ? " (this host)" : ""), r.address || "-", stateBadge(r.state), r.role || "-",
        capacity(r), r.vms ? `${r.vms.running}/${r.vms.defined}` : "-",
        ago(r.heartbeat) || (r.down_since ? `down ${ago(r.down_since)}` : "-")]),
      { label: "Hosts" }));
    clear(membersBox, h("h2", { id: "members-h" }, "etcd members"),
      table([{ title: "Member" }, { title: "Healthy" }, { title: "Leader" }, { title: "Endpoint" }, { title: "Raft index", num: true }],
        status.members.map((m) => [m.name, m.healthy ? "yes" : `no${m.error ? ": " + m.error : ""}`, m.leader ? "yes" : "",
          m.endpoints.join(", "), m.raft_index ?? "-"]),
        { label: "etcd members" }));
  };
  await refresh();
  return every(5000, refresh);
}
