"""A fault-injection TCP proxy between clients and one server port.

There is no netem or toxiproxy here, so fault tests put this proxy in the client's path
(as etcd's own robustness tests do) and switch faults at run time::

    async with FaultProxy("127.0.0.1", server.port) as proxy:
        async with coordination.connect(f"etcd://{proxy.address}") as coord:
            proxy.blackhole()          # both directions stall, connections stay open
            ...
            proxy.heal()               # bytes flow again, in order

Faults:

* :meth:`delay` — every chunk waits ``seconds`` before it is forwarded (order kept);
* :meth:`blackhole` — nothing is forwarded in one direction or both until :meth:`heal`
  (bytes are held, not lost, as TCP retransmits across a healed partition);
* :meth:`refuse` — new connections are closed at once (the server looks down);
* :meth:`drop_next_reply` — the next server-to-client chunk is discarded and that connection
  reset: the request was applied, its reply never arrives;
* :meth:`reset` — every open connection is reset now.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from types import TracebackType
from typing import Literal, Self

import anyio
from anyio.abc import Listener, SocketAttribute, SocketStream, TaskGroup

__all__ = ["Direction", "FaultProxy"]

Direction = Literal["both", "upstream", "downstream"]
"""``upstream`` is client to server, ``downstream`` server to client."""


class _Gate:
    """Open or closed; waiters pass once it is open."""

    def __init__(self) -> None:
        self._open: anyio.Event | None = None  # None: open

    def close(self) -> None:
        if self._open is None:
            self._open = anyio.Event()

    def open(self) -> None:
        if self._open is not None:
            self._open.set()
            self._open = None

    async def wait_open(self) -> None:
        while self._open is not None:
            await self._open.wait()


class _Link:
    """One proxied connection: the client's socket, the server's, and its task scope."""

    def __init__(self, client: SocketStream, server: SocketStream, scope: anyio.CancelScope) -> None:
        self.client = client
        self.server = server
        self.scope = scope

    def reset(self) -> None:
        for stream in (self.client, self.server):
            sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
            with contextlib.suppress(OSError):  # an RST instead of a FIN, as a dropped connection
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.scope.cancel()


class FaultProxy:
    """Forwards connections from ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = 0
        self.connections = 0
        """How many connections the proxy has accepted (to see reconnects)."""
        self.bytes_up = 0
        """Bytes forwarded from clients to the server (to measure traffic)."""
        self.bytes_down = 0
        """Bytes forwarded from the server to clients."""
        self.chunks_up = 0
        """Reads forwarded from clients to the server: at idle, about one per request."""
        self.chunks_down = 0
        """Reads forwarded from the server to clients."""
        self._delay = 0.0
        self._gates: dict[str, _Gate] = {"upstream": _Gate(), "downstream": _Gate()}
        self._refusing = False
        self._drop_reply = False
        self._links: set[_Link] = set()
        self._tg: TaskGroup | None = None

    @property
    def open_connections(self) -> int:
        """How many proxied connections are open now (to see which node a client talks to)."""
        return len(self._links)

    @property
    def address(self) -> str:
        """``host:port`` to give the client instead of the server's."""
        return f"{self.listen_host}:{self.port}"

    # -- faults --------------------------------------------------------------------------------

    def heal(self) -> None:
        """Back to plain forwarding: no delay, no blackhole, connections accepted."""
        self._delay = 0.0
        self._refusing = False
        self._drop_reply = False
        for gate in self._gates.values():
            gate.open()

    def delay(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it."""
        self._delay = seconds

    def blackhole(self, direction: Direction = "both") -> None:
        """Forward nothing in ``direction`` until :meth:`heal`; connections stay open."""
        for name in self._directions(direction):
            self._gates[name].close()

    def refuse(self) -> None:
        """Close new connections at once, until :meth:`heal`."""
        self._refusing = True

    def drop_next_reply(self) -> None:
        """Discard the next server-to-client chunk and reset that connection."""
        self._drop_reply = True

    def reset(self) -> None:
        """Reset every open connection now (new ones are accepted)."""
        for link in list(self._links):
            link.reset()

    @staticmethod
    def _directions(direction: Direction) -> tuple[str, ...]:
        if direction not in ("both", "upstream", "downstream"):
            raise ValueError(f"direction must be 'both', 'upstream' or 'downstream', not {direction!r}")
        return ("upstream", "downstream") if direction == "both" else (direction,)

    # -- serving -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(local_host=self.listen_host, local_port=self.port)
        self.port = listener.extra(SocketAttribute.local_port)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._listen, listener)
        return self

    async def _listen(self, listener: Listener[SocketStream]) -> None:
        async with listener:
            await listener.serve(self._serve)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        self.heal()
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        self._tg = None

    async def _serve(self, client: SocketStream) -> None:
        self.connections += 1
        async with client:
            if self._refusing:
                return
            try:
                server = await anyio.connect_tcp(*self.target)
            except OSError:
                return
            async with server, anyio.create_task_group() as tg:
                link = _Link(client, server, tg.cancel_scope)
                self._links.add(link)
                tg.start_soon(self._pump, link, client, server, "upstream")
                tg.start_soon(self._pump, link, server, client, "downstream")
            self._links.discard(link)

    async def _pump(self, link: _Link, source: SocketStream, sink: SocketStream, direction: str) -> None:
        gate = self._gates[direction]
        try:
            async for chunk in source:
                if self._delay:
                    await anyio.sleep(self._delay)
                await gate.wait_open()
                if direction == "downstream" and self._drop_reply:
                    self._drop_reply = False
                    link.reset()
                    return
                await sink.send(chunk)
                if direction == "upstream":
                    self.chunks_up += 1
                    self.bytes_up += len(chunk)
                else:
                    self.chunks_down += 1
                    self.bytes_down += len(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        link.scope.cancel()  # one side closed: close the other
