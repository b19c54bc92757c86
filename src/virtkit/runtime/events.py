"""The event bus: every state change becomes an event, journaled and fanned out.

Events are small dicts (``{"id", "time", "type", "domain", "uuid", "state",
"reason"}``).  They are appended to the store's journal (so a client can ask
for what it missed) and pushed to every live subscriber queue (the WebSocket
streams).  A slow subscriber loses old events rather than blocking the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

from virtkit.store.db import Store

EventDict = dict[str, Any]

#: The event types a domain goes through.
DOMAIN_EVENTS = ("defined", "updated", "started", "paused", "resumed", "shutdown",
                 "crashed", "stopped", "undefined", "saved", "restored", "rebooted")


class EventBus:
    """Publish events to the journal and to subscriber queues."""

    def __init__(self, store: Store, queue_size: int = 1000) -> None:
        self._store = store
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[EventDict]] = set()

    def publish(self, kind: str, obj: str, **detail: Any) -> EventDict:
        event: EventDict = {"time": time.time(), "type": kind, **detail}
        event["id"] = self._store.append_event(kind, obj, event)
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)
        return event

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[EventDict]]:
        """A queue that receives every event published while the context is open."""
        queue: asyncio.Queue[EventDict] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def since(self, event_id: int) -> list[EventDict]:
        return self._store.events_since(event_id)
