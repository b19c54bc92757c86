// The web console's entry point: login, the hash router, and the live event feed
// that every page can listen to.

import { ApiError, get, post, setSession, whenUnauthorized } from "./api.js";
import { connect as connectEvents, disconnect as disconnectEvents } from "./feed.js";
import { clear, formData, showError } from "./ui.js";
import * as overview from "./pages/overview.js";
import * as vms from "./pages/vms.js";
import * as vm from "./pages/vm.js";
import * as wizard from "./pages/wizard.js";
import * as storage from "./pages/storage.js";
import * as networks from "./pages/networks.js";
import * as events from "./pages/events.js";
import * as hosts from "./pages/hosts.js";

const routes = { overview, vms, vm, new: wizard, storage, networks, events, hosts };
const main = document.getElementById("main");
let cleanup = null;

// -- routing ------------------------------------------------------------------------
async function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "overview").split("/").map(decodeURIComponent);
  const page = routes[parts[0]] ? parts[0] : "overview";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.nav === (page === "vm" ? "vms" : page)) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (cleanup) { try { cleanup(); } catch { /* ignore */ } cleanup = null; }
  clear(main);
  try {
    cleanup = (await routes[page].render(main, parts.slice(1))) || null;
  } catch (err) {
    showError(err, main);
  }
  main.focus({ preventScroll: true });
}

// -- login --------------------------------------------------------------------------
function showLogin(message) {
  setSession(null);
  document.getElementById("app").hidden = true;
  document.getElementById("login").hidden = false;
  const box = document.getElementById("login-error");
  box.hidden = !message;
  box.textContent = message || "";
  disconnectEvents();
}

async function enter(session) {
  setSession(session);
  document.getElementById("login").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("who").textContent = session.user;
  connectEvents();
  await route();
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const fields = formData(form);
  const body = fields.token ? { token: fields.token } : { username: fields.username, password: fields.password };
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const session = await post("/web/login", body);
    form.reset();
    await enter(session);
  } catch (err) {
    showLogin(err instanceof ApiError ? err.plain : String(err));
  } finally {
    button.disabled = false;
  }
});

document.getElementById("logout").addEventListener("click", async () => {
  try { await post("/web/logout"); } catch { /* already gone */ }
  showLogin("You have logged out.");
});

whenUnauthorized(() => showLogin("Your session has ended. Log in again."));
window.addEventListener("hashchange", () => { if (!document.getElementById("app").hidden) route(); });

(async () => {
  try {
    await enter(await get("/web/session"));
  } catch {
    showLogin("");
  }
})();

