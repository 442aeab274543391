"""A small HTTP/1.1 server-side parser and response framer over asyncio streams.

Only what a JSON API needs: keep-alive, pipelining (requests are read one after
another from the stream), ``Content-Length`` bodies and ``Expect: 100-continue``.
Chunked request bodies are refused with 411: httpx, curl and requests all send
a Content-Length for a JSON body. Anything malformed raises
:class:`~sandbox.exceptions.ProtocolError` and the connection is closed after
the answer, because the stream's framing can no longer be trusted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from oaksend.sandbox.exceptions import ProtocolError
from oaksend.sandbox.responses import Response, reason

#: request line plus headers; also passed to asyncio as the stream buffer limit
MAX_HEAD_BYTES = 64 * 1024
_DIGITS = frozenset(b"0123456789")


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str]  #: lower-case names; a repeated header keeps its last value
    body: bytes
    keep_alive: bool


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body_bytes: int
) -> Request | None:
    """The next request on the connection, or None when the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # closed, possibly mid-head: there is nobody left to answer
    except asyncio.LimitOverrunError:
        raise ProtocolError(431, "Request header fields too large") from None

    lines = head[:-4].split(b"\r\n")
    while lines and not lines[0]:  # RFC 9112 2.2: ignore empty lines before the request line
        lines.pop(0)
    if not lines:
        raise ProtocolError(400, "Empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ProtocolError(400, "Malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ProtocolError(505, "HTTP version not supported")

    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        # No whitespace before the colon (RFC 9112 5.1): it is how smuggling starts.
        if not sep or not name or name != name.strip():
            raise ProtocolError(400, "Malformed header line")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if key == "content-length" and key in headers and headers[key] != text:
            raise ProtocolError(400, "Conflicting Content-Length headers")
        headers[key] = text

    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection

    if "transfer-encoding" in headers:
        raise ProtocolError(411, "Transfer-Encoding is not supported: send a Content-Length")
    length_text = headers.get("content-length", "0")
    if not length_text or not _DIGITS.issuperset(length_text.encode("latin-1")):
        raise ProtocolError(400, "Invalid Content-Length")
    length = int(length_text)
    if length > max_body_bytes:
        raise ProtocolError(413, f"Body larger than {max_body_bytes} bytes")

    body = b""
    if length:
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return None
    path, _, query = target.partition("?")
    return Request(method, target, path, query, version, headers, body, keep_alive)


def render(response: Response, keep_alive: bool) -> bytes:
    """The response framed as HTTP/1.1 bytes."""
    lines = [
        f"HTTP/1.1 {response.status} {reason(response.status)}",
        "Server: oaksend-sandbox",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
