"""How many requests per second the sandbox serves (not a test: run it by hand).

    .venv/bin/python -m tests.sandbox.bench_throughput [sandbox flags...]

Drives a sandbox subprocess with httpx clients in threads (one keep-alive
client each, as the project's workers do), then with a raw asyncio client that
keeps 16 connections busy, and prints the rate and the sandbox's CPU use: the
httpx figures are bound by the client, the raw figure shows the server's headroom.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.sandbox.helpers import KEY, PHONE, SEND_PATH, start_sandbox

SECONDS = 4.0


def httpx_threads(base_url: str, threads: int) -> float:
    deadline = time.monotonic() + SECONDS
    counts = [0] * threads

    def work(i: int) -> None:
        body = {"SerialNumber": f"SN{i}", "ToPhoneNumber": PHONE, "Message": "hello"}
        with httpx.Client(base_url=base_url) as client:
            while time.monotonic() < deadline:
                response = client.post(SEND_PATH, json=body, headers={"Authorization": KEY})
                assert response.status_code == 200, response.status_code
                counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - started)


async def raw_connections(base_url: str, connections: int) -> float:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"SerialNumber": "SN-RAW", "ToPhoneNumber": PHONE, "Message": "hello"}).encode()
    request = (
        f"POST {SEND_PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    deadline = time.monotonic() + SECONDS
    total = 0

    async def one() -> None:
        nonlocal total
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            total += 1
        writer.close()
        await writer.wait_closed()

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    return total / (time.monotonic() - started)


def main(flags: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = start_sandbox(Path(tmp), "--api-key", KEY, *flags)
        process = psutil.Process(sandbox.process.pid)

        def cpu_s() -> float:
            times = process.cpu_times()
            return times.user + times.system

        try:
            for threads in (1, 2, 4):
                before = cpu_s()
                rate = httpx_threads(sandbox.base_url, threads)
                busy = (cpu_s() - before) / SECONDS
                print(f"httpx.Client x{threads} threads: {rate:6.0f} req/s   sandbox CPU {busy:4.0%} of a core", flush=True)
            before = cpu_s()
            rate = asyncio.run(raw_connections(sandbox.base_url, 16))
            busy = (cpu_s() - before) / SECONDS
            print(f"raw asyncio, 16 connections: {rate:6.0f} req/s   sandbox CPU {busy:4.0%} of a core", flush=True)
        finally:
            sandbox.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
