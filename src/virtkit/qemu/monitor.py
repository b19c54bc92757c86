"""The QMP monitor of one QEMU process, over the ``qemu.qmp`` library.

:class:`Monitor` wraps :class:`qemu.qmp.QMPClient` with what the runtime
needs: command errors become :class:`QemuError` carrying the command sent, the
QMP error class and QEMU's description; every event is fanned out to
subscribers; and :meth:`Monitor.expect` registers interest in an event
*before* the command that causes it is sent, so the event cannot be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from virtkit.errors import QemuError, QmpCommandError, TimeoutExpired
from virtkit.qemu.qmp import DEFAULT_TIMEOUT, QmpCommands

log = logging.getLogger(__name__)

Event = dict[str, Any]
EventCallback = Callable[[Event], None]


class Monitor(QmpCommands):
    """One QMP session with a QEMU process; its typed commands are in qemu/qmp.py."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._client = QMPClient(name)
        self._listener = EventListener()
        self._subscribers: list[EventCallback] = []
        self._waiters: list[tuple[str, Callable[[Event], bool], asyncio.Future[Event]]] = []
        self._pump: asyncio.Task[None] | None = None

    async def connect(self, sock: socket.socket, *, timeout: float = 10.0) -> None:
        """Negotiate QMP over an already connected socket and start the event pump."""
        self._client.register_listener(self._listener)
        try:
            await asyncio.wait_for(self._client.connect(sock), timeout)
        except (TimeoutError, QMPError, OSError) as exc:
            raise QemuError(f"QMP handshake with '{self.name}' failed: {exc!r}") from exc
        self._pump = asyncio.create_task(self._pump_events(), name=f"qmp-events-{self.name}")

    def subscribe(self, callback: EventCallback) -> None:
        """Call ``callback(event)`` for every QMP event from now on."""
        self._subscribers.append(callback)

    def expect(self, event: str, predicate: Callable[[Event], bool] | None = None
               ) -> asyncio.Future[Event]:
        """A future resolved by the next ``event`` matching ``predicate``; call before acting."""
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((event, predicate or (lambda _e: True), future))
        return future

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                      timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Run one QMP command; QEMU's error becomes a QmpCommandError naming it.

        Call the typed methods of :class:`QmpCommands` instead of this outside qemu/."""
        try:
            return await asyncio.wait_for(self._client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            received = dict(exc.received)
            error = received.get("error")
            description = str(error.get("desc") if isinstance(error, dict) else exc)
            raise QmpCommandError(
                f"QEMU refused {command}: {description}",
                command=command,
                arguments=arguments or {},
                error_class=exc.error_class,
                description=description,
                received=received,
            ) from None
        except TimeoutError:
            raise TimeoutExpired(f"QEMU did not answer {command} within {timeout:g}s") from None
        except (QMPError, OSError, EOFError) as exc:
            raise QemuError(f"lost the QMP connection during {command}: {exc!r}",
                            command=command) from exc

    def send_fd(self, fd: int) -> None:
        """Pass ``fd`` to QEMU (SCM_RIGHTS); the next ``getfd``/``add-fd`` names it."""
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as exc:
            raise QemuError(f"cannot pass a file descriptor to QEMU: {exc!r}") from exc

    async def _pump_events(self) -> None:
        while True:
            try:
                message = await self._listener.get()
            except asyncio.CancelledError:
                return
            event: Event = dict(message)
            for callback in list(self._subscribers):
                try:
                    callback(event)
                except Exception:  # a subscriber's bug must not stop the pump
                    log.exception("event subscriber failed on %s", event.get("event"))
            for waiter in list(self._waiters):
                name, predicate, future = waiter
                if future.done():
                    self._waiters.remove(waiter)
                elif name == event.get("event"):
                    try:
                        matched = predicate(event)
                    except Exception as exc:  # a bad predicate fails its waiter only
                        future.set_exception(exc)
                        self._waiters.remove(waiter)
                        continue
                    if matched:
                        future.set_result(event)
                        self._waiters.remove(waiter)

    async def close(self) -> None:
        """Disconnect; QEMU keeps running and accepts a new monitor connection later."""
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        for _name, _pred, future in self._waiters:
            if not future.done():
                future.cancel()
        self._waiters.clear()
        with contextlib.suppress(QMPError, OSError, EOFError):
            await self._client.disconnect()
