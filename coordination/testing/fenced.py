"""A fenced resource in a process of its own: it refuses writes with a stale fencing token.

``python -m coordination.testing.fenced --log PATH`` listens on a free loopback port and
prints ``listening HOST:PORT`` once ready. A client sends one line per write::

    write <resource> <token> <writer>

and gets ``accepted <highest>`` or ``refused <highest>``: a write is accepted only when its
token is at least the highest token the resource has accepted so far, as a store that checks
fencing tokens does. Every decision is appended to the log, one line each::

    <accepted|refused> <resource> <token> <writer> <time>

with the time the resource decided (``time.monotonic()``: on Linux one clock for the whole
machine, comparable with the holders' and the test's).

The point is who decides. A lock holder under test cannot influence this process: it only
sends writes; what was refused is what this process refused, read back from its log by
:meth:`FencedProcess.decisions`. Holders write to it with ``--resource HOST:PORT`` (see
:mod:`coordination.testing.holder`).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["Decision", "FencedClient", "FencedProcess", "main", "read_decisions"]


@dataclass(frozen=True)
class Decision:
    """One write the resource decided on."""

    accepted: bool
    resource: str
    token: int
    writer: str
    at: float


def read_decisions(path: str | os.PathLike[str]) -> list[Decision]:
    """The decisions of a resource's log, in the order it made them."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    decisions = []
    for line in lines:
        verdict, resource, token, writer, at = line.split()
        decisions.append(Decision(verdict == "accepted", resource, int(token), writer, float(at)))
    return decisions


# --------------------------------------------------------------------------- the server


class _Resource:
    def __init__(self, log: str) -> None:
        self.highest: dict[str, int] = {}
        self._fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def decide(self, resource: str, token: int, writer: str) -> tuple[bool, int]:
        # One event loop, no await between the check and the log line: decisions are atomic
        # and logged in the order they were made.
        highest = self.highest.get(resource, 0)
        accepted = token >= highest
        if accepted:
            highest = self.highest[resource] = token
        verdict = "accepted" if accepted else "refused"
        os.write(self._fd, f"{verdict} {resource} {token} {writer} {time.monotonic():.6f}\n".encode())
        return accepted, highest

    async def serve(self, stream: SocketStream) -> None:
        lines = BufferedByteReceiveStream(stream)
        async with stream:
            try:
                while True:
                    line = (await lines.receive_until(b"\n", 4096)).decode()
                    word, *rest = line.split()
                    if word != "write" or len(rest) != 3:
                        await stream.send(
                            f"error expected 'write RESOURCE TOKEN WRITER', got {line!r}\n".encode()
                        )
                        continue
                    resource, token, writer = rest
                    accepted, highest = self.decide(resource, int(token), writer)
                    await stream.send(f"{'accepted' if accepted else 'refused'} {highest}\n".encode())
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, ValueError):
                pass


async def _serve(log: str) -> None:
    resource = _Resource(log)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    print(f"listening 127.0.0.1:{port}", flush=True)
    await listener.serve(resource.serve)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coordination.testing.fenced", description=__doc__)
    parser.add_argument("--log", required=True, metavar="PATH", help="append every decision here")
    args = parser.parse_args(argv)
    with suppress(KeyboardInterrupt):
        anyio.run(_serve, args.log)


# --------------------------------------------------------------------------- the clients


class FencedClient:
    """A blocking client (for a holder's worker thread: writes are blocking I/O)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._address = (host, int(port))
        self._socket: socket.socket | None = None
        self._buffer = b""

    def write(self, resource: str, token: int, writer: str) -> bool:
        """Send one write; whether the resource accepted it."""
        if self._socket is None:
            self._socket = socket.create_connection(self._address, timeout=10)
        self._socket.sendall(f"write {resource} {token} {writer}\n".encode())
        while b"\n" not in self._buffer:
            chunk = self._socket.recv(4096)
            if not chunk:
                raise ConnectionError("the fenced resource closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        verdict = line.decode().split()[0]
        if verdict not in ("accepted", "refused"):
            raise ValueError(f"the fenced resource answered {line.decode()!r}")
        return verdict == "accepted"

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class FencedProcess:
    """The resource process, started by :meth:`start`; :meth:`decisions` reads its log."""

    def __init__(self, process: anyio.abc.Process, address: str, log: Path) -> None:
        self.process = process
        self.address = address
        """``host:port`` to give holders as ``--resource``."""
        self.log = log

    @classmethod
    @asynccontextmanager
    async def start(cls, log: str | os.PathLike[str]) -> AsyncIterator[FencedProcess]:
        """Start the resource process logging to ``log``; stopped at the end of the block."""
        command = [sys.executable, "-m", "coordination.testing.fenced", "--log", str(log)]
        process = await anyio.open_process(command, stdin=subprocess.DEVNULL, stderr=None)
        try:
            assert process.stdout is not None
            lines = BufferedByteReceiveStream(process.stdout)
            with anyio.fail_after(30):
                line = (await lines.receive_until(b"\n", 4096)).decode()
            word, _, address = line.partition(" ")
            if word != "listening":
                raise RuntimeError(f"the fenced resource process said {line!r}")
            yield cls(process, address.strip(), Path(log))
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                with anyio.move_on_after(10):
                    await process.wait()
                await process.aclose()

    def decisions(self, resource: str | None = None, writer: str | None = None) -> list[Decision]:
        """What the resource decided so far (of ``resource`` and ``writer``, if given)."""
        return [
            decision
            for decision in read_decisions(self.log)
            if (resource is None or decision.resource == resource)
            and (writer is None or decision.writer == writer)
        ]

    def write(self, resource: str, token: int, writer: str) -> bool:
        """One write from the test itself (blocking; call it through a thread in async code)."""
        client = FencedClient(self.address)
        try:
            return client.write(resource, token, writer)
        finally:
            client.close()


if __name__ == "__main__":
    main()
