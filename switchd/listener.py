"""Terminal listeners: accept TCP connections and run one task per connection.

Resource handling
-----------------
- At most ``terminals.max_connections`` connections at once across all
  listeners; one more is accepted and closed at once (a clean refusal the
  terminal sees as a connection reset, counted and logged) rather than left
  in the backlog where it would time out slowly.
- Each connection is a task in the listeners' nursery; an exception in one
  is logged and ends that connection only: in trio an exception escaping a
  nursery child would stop every listener.

Error handling
--------------
Accept errors that mean the process or the kernel is out of something
(EMFILE, ENFILE, ENOMEM, ENOBUFS) are logged and retried after
``ACCEPT_BACKOFF_S``: refusing to die under overload is the point, and the
pause lets connections finish and free what they hold. Any other accept
error is a bug or a closed socket and ends that listener.

Draining
--------
``drain()`` stops accepting and asks every connection to finish: a
connection waiting for a request closes at once; one in the middle of a
transaction finishes it, answers, then closes.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import trio

from switchd import metrics
from switchd.config import Config

log = logging.getLogger("switchd.listener")

#: Pause after an accept error caused by resource exhaustion (trio does the same).
ACCEPT_BACKOFF_S = 0.1
OVERLOAD_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

#: Pending connections the kernel may queue per listener (capped by somaxconn).
BACKLOG = 4096
#: How often the sweeper looks for connections waiting past their read
#: timeout: timeouts are kept to within this much (see connection.py).
SWEEP_S = 0.25

ConnectionHandler = Callable[[trio.SocketStream, "Listeners"], Awaitable[None]]


class Listeners:
    def __init__(
        self, cfg: Config, handler: ConnectionHandler, *, reuse_port: bool = False
    ) -> None:
        self.cfg = cfg
        # Several worker processes share each port (SO_REUSEPORT): the kernel
        # spreads new connections over them.
        self.reuse_port = reuse_port
        self.handler = handler
        self.active = 0
        self.draining = False
        self.addresses: list[tuple[str, int]] = []
        self._accept_scope = trio.CancelScope()
        # Connections blocked reading, by the scope that ends them, with the
        # time they may wait until (idle or mid-frame): the sweeper cancels
        # those past it, and a drain cancels them all.
        self.reading: dict[trio.CancelScope, float] = {}

    async def serve(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners: list[trio.SocketListener] = []
        for spec in self.cfg.listeners:
            if self.reuse_port:
                listeners.append(await _reuse_port_listener(spec.host, spec.port))
            else:
                listeners.extend(
                    await trio.open_tcp_listeners(spec.port, host=spec.host, backlog=BACKLOG)
                )
        for lst in listeners:
            host, port = lst.socket.getsockname()[:2]
            self.addresses.append((host, port))
        async with trio.open_nursery() as outer:
            outer.start_soon(self._sweep)
            async with trio.open_nursery() as nursery:
                with self._accept_scope:
                    async with trio.open_nursery() as accepters:
                        for lst in listeners:
                            accepters.start_soon(self._accept_loop, lst, nursery)
                        task_status.started(self.addresses)
                for lst in listeners:
                    await lst.aclose()
                # nursery now waits for the connections to finish
            outer.cancel_scope.cancel()

    async def _sweep(self) -> None:
        """End the reads that have waited past their time (idle or stalled mid-frame)."""
        while True:
            await trio.sleep(SWEEP_S)
            now = trio.current_time()
            # Iterated in place, not copied: a copy of thousands of entries
            # every sweep fed the garbage collector.
            expired = [scope for scope, until in self.reading.items() if until <= now]
            for scope in expired:
                scope.cancel()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in OVERLOAD_ERRNOS:
                    log.error("accept failed: %s; retrying in %.1fs", exc, ACCEPT_BACKOFF_S)
                    await trio.sleep(ACCEPT_BACKOFF_S)
                    continue
                raise
            if self.active >= self.cfg.terminals.max_connections:
                metrics.CONNECTIONS_REFUSED.inc()
                log.warning("connection refused: %d connections open (max)", self.active)
                await stream.aclose()
                continue
            metrics.CONNECTIONS_ACCEPTED.inc()
            self.active += 1
            metrics.CONNECTIONS.set(self.active)
            nursery.start_soon(self._run, stream)

    async def _run(self, stream: trio.SocketStream) -> None:
        try:
            await self.handler(stream, self)
        except Exception:
            log.exception("connection handler failed")
        finally:
            self.active -= 1
            metrics.CONNECTIONS.set(self.active)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    def drain(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their answer."""
        self.draining = True
        self._accept_scope.cancel()
        for scope in list(self.reading):
            scope.cancel()


async def _reuse_port_listener(host: str, port: int) -> trio.SocketListener:
    info = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    family, type_, proto, _, addr = info[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind(addr)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)
