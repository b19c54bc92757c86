// The live event feed: what the daemon publishes (lifecycle changes, devices,
// jobs), newest first, as it happens.

import { clear, h, time } from "../ui.js";
import { onEvent, recentEvents } from "../feed.js";

function describe(event) {
  const subject = event.domain || event.network || event.pool || event.object || "";
  const detail = ["state", "reason", "detail", "message"].map((k) => event[k]).filter(Boolean).join(" · ");
  return h("li", {}, h("span", { class: "muted" }, time(event.time)), " ", h("strong", {}, event.type), " ",
    subject ? h("a", { href: event.domain ? `#/vm/${encodeURIComponent(event.domain)}` : "#/events" }, subject) : null, " ", detail);
}

export async function render(root) {
  const list = h("ul", { class: "events", "aria-live": "polite", "aria-label": "Events" });
  clear(root, h("h1", {}, "Events"), h("p", { class: "muted" }, "Live: new events appear at the top."), list);
  for (const event of recentEvents.slice(-200).reverse()) list.append(describe(event));
  if (!recentEvents.length) list.append(h("li", { class: "muted", id: "no-events" }, "No events since this page was opened."));
  return onEvent((event) => {
    const placeholder = document.getElementById("no-events");
    if (placeholder) placeholder.remove();
    list.prepend(describe(event));
    while (list.children.length > 500) list.lastChild.remove();
  });
}
