// The browser's side of the virtkit API: fetch with the session's CSRF token,
// errors as ApiError (the daemon's message and fix, in plain words), uploads
// with progress, and WebSocket URLs on this same origin.

let csrf = null;
let onUnauthorized = () => {};

export function setSession(session) { csrf = session ? session.csrf : null; }
export function whenUnauthorized(callback) { onUnauthorized = callback; }

export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && body.message) || `request failed (HTTP ${status})`;
    super(message);
    this.status = status;
    this.fix = body && body.fix;
    this.code = body && body.error;
  }
  /** The message a person reads: what went wrong, then what to do. */
  get plain() { return this.fix ? `${this.message}. What to do: ${this.fix}.` : this.message; }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    // Chromium aborts requests in flight when the host's addresses change
    // (ERR_NETWORK_CHANGED), as they do when this console creates a network on the
    // host the browser runs on: a read is asked once more; a change is not, since
    // it may have reached the daemon.
    if (method !== "GET" && method !== "HEAD") throw unreachable();
    await new Promise((resolve) => setTimeout(resolve, 250));
    try { response = await fetch(path, init); } catch { throw unreachable(); }
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith("/web/login")) onUnauthorized();
    throw new ApiError(response.status, typeof data === "object" ? data : { message: text });
  }
  return data;
}

function unreachable() {
  return new ApiError(0, { message: "the daemon cannot be reached (network error)",
                           fix: "check that virtkitd is running, then reload the page" });
}

export const get = (path) => api("GET", path);
export const post = (path, body = {}) => api("POST", path, body);
export const put = (path, body = {}) => api("PUT", path, body);
export const del = (path) => api("DELETE", path);

/** PUT a file as the request body, calling progress(fraction) as it goes. */
export function upload(path, file, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", path);
    if (csrf) xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress(e.loaded / e.total); };
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { data = { message: xhr.responseText }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data));
    };
    xhr.onerror = () => reject(new ApiError(0, { message: "the upload was interrupted" }));
    xhr.send(file);
  });
}

export function wsUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

export const enc = encodeURIComponent;
export const domainPath = (name, suffix = "") => `/v1/domains/${enc(name)}${suffix}`;
/** What the console's Delete removes with the definition (virt-manager's delete also
 *  drops snapshot metadata and NVRAM; disk images stay). */
export const DELETE_QUERY = "?snapshots_metadata=1&nvram=1";
