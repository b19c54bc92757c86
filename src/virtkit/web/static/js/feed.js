// The live event feed: one WebSocket to /v1/events shared by every page.

import { wsUrl } from "./api.js";

const listeners = new Set();
export const recentEvents = [];
let socket = null;
let wanted = false;

/** Call callback(event) for each new event; returns the function that stops it. */
export function onEvent(callback) {
  listeners.add(callback);
  return () => listeners.delete(callback);
}

export function connect() {
  wanted = true;
  if (socket) return;
  socket = new WebSocket(wsUrl("/v1/events"));
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    recentEvents.push(event);
    if (recentEvents.length > 500) recentEvents.shift();
    for (const callback of listeners) callback(event);
  };
  socket.onclose = () => {
    socket = null;
    if (wanted) setTimeout(() => { if (wanted) connect(); }, 3000);
  };
}

export function disconnect() {
  wanted = false;
  if (socket) socket.close();
}
