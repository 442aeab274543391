"""The asyncio side of the sandbox: sockets, connections, signals, entry points.

Built on ``asyncio.start_server`` with the small parser of :mod:`sandbox.http11`
rather than an ASGI stack, so that one core serves thousands of requests per
second and the fake is never the bottleneck of a benchmark of the real client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from oaksend.sandbox.app import SandboxApp
from oaksend.sandbox.config import Config, load_config
from oaksend.sandbox.exceptions import ConfigError, ProtocolError
from oaksend.sandbox.http11 import MAX_HEAD_BYTES, read_request, render
from oaksend.sandbox.responses import error

log = logging.getLogger("sandbox")

#: a valid send body is under 2 kB; this only stops a runaway client
MAX_BODY_BYTES = 1024 * 1024
STARTUP_TIMEOUT_S = 10.0


class SandboxServer:
    """One listening fake API; start it and close it inside a running event loop."""

    def __init__(self, config: Config) -> None:
        self.app = SandboxApp(config, time.monotonic())
        self.base_url = ""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> str:
        """Binds and listens; returns the base URL (with the real port when port was 0)."""
        config = self.app.config
        self._server = await asyncio.start_server(
            self._serve, config.host, config.port, limit=MAX_HEAD_BYTES, reuse_address=True
        )
        port = self._server.sockets[0].getsockname()[1]
        self.app.config = dataclasses.replace(config, port=port)  # GET /_sandbox/config shows the real one
        host = f"[{config.host}]" if ":" in config.host else config.host
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def close(self) -> None:
        """Stops listening and ends every open connection, hung ones included."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # lets the transports run connection_lost before the loop goes

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        app = self.app
        try:
            while True:
                try:
                    request = await read_request(reader, writer, MAX_BODY_BYTES)
                except ProtocolError as exc:
                    writer.write(render(error(exc.status, str(exc)), keep_alive=False))
                    break
                if request is None:
                    break
                action = app.handle(request, time.time(), time.monotonic())
                if action.delay_s > 0.0:
                    await asyncio.sleep(action.delay_s)
                if action.reset:
                    _reset(writer)
                    break
                if action.response is None:  # the hang is over: close without a word
                    break
                writer.write(render(action.response, request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    break
        except ConnectionError:
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            # Shutting down. Ending normally rather than cancelled: asyncio 3.11's stream
            # callback calls task.exception() on a cancelled handler and logs a bogus error.
            pass
        except Exception:  # a bug must cost one connection, not the server
            log.exception("sandbox: unexpected error on a connection")
            with contextlib.suppress(Exception):
                writer.write(render(error(500, "sandbox internal error"), keep_alive=False))
        finally:
            self._connections.discard(task)
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Aborts the connection with an RST, the way a crashed upstream does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER on with a zero timeout turns close() into an RST instead of a FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- the command line


def main(argv: Sequence[str] | None = None) -> int:
    """``oaksend sandbox [flags]`` / ``python -m oaksend.sandbox``: serve until SIGTERM or SIGINT.

    Exit codes: 0 after a signal (records written), 1 when the server cannot
    listen or the record file cannot be written, 2 for invalid configuration.
    """
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.setLevel(config.log_level)
    try:
        return asyncio.run(_serve_until_signal(config))
    except OSError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1


async def _serve_until_signal(config: Config) -> int:
    server = SandboxServer(config)
    base_url = await server.start()
    print(f"sandbox listening on {base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close()
    record_file = server.app.config.record_file  # may have been changed at runtime
    if record_file:
        count = server.app.records.write_jsonl(record_file)
        log.info("sandbox: wrote %d records to %s", count, record_file)
    return 0


# --- in-process use


class SandboxThread:
    """A sandbox serving from a background thread with its own event loop.

    For quick tests in one process. ``app`` gives direct access to records and
    stats; read it only while no request is in flight (the loop thread owns it).
    """

    def __init__(self, config: Config | None = None, **changes: Any) -> None:
        config = config if config is not None else Config(port=0)
        self.config = dataclasses.replace(config, **changes) if changes else config
        self.base_url = ""
        self._server: SandboxServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox", daemon=True)

    @property
    def app(self) -> SandboxApp:
        assert self._server is not None, "start() first"
        return self._server.app

    def start(self) -> str:
        """Starts serving; returns the base URL once the socket listens."""
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S):
            raise TimeoutError("sandbox thread did not start")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self.base_url

    def stop(self) -> None:
        """Closes every connection and ends the thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(STARTUP_TIMEOUT_S)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            self._server = SandboxServer(self.config)
            self.base_url = await self._server.start()
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            return
        finally:
            self._ready.set()
        await self._stop.wait()
        await self._server.close()

    def __enter__(self) -> SandboxThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_sandbox(config: Config | None = None, **changes: Any) -> Iterator[str]:
    """``with running_sandbox(p_503=0.2) as base_url:`` serves on a free port for the block."""
    with SandboxThread(config, **changes) as sandbox:
        yield sandbox.base_url
