"""The sandbox answers like the documented SendTwilioMessage API."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.sandbox.helpers import KEY, PHONE, SEND_PATH, SERIAL, records, send


def test_success_envelope_and_growing_session_ids(client: httpx.Client) -> None:
    first, second = send(client), send(client)

    assert first.status_code == 200
    body = first.json()
    assert body == {
        "Data": {"Status": "True", "Message": "", "SessionID": body["Data"]["SessionID"]},
        "Version": "1.0.0",
        "Success": True,
        "Code": 200,
        "Message": "",
    }
    assert body["Data"]["SessionID"] > 2**31
    assert second.json()["Data"]["SessionID"] == body["Data"]["SessionID"] + 1


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert body["Data"] is None and body["Success"] is False and body["Version"] == "1.0.0"
    assert body["Code"] == response.status_code
    return body["Message"]


@pytest.mark.parametrize("key", ["wrong", f"Bearer {KEY}", KEY.upper(), KEY[:-1], ""])
def test_wrong_key_is_401(client: httpx.Client, key: str) -> None:
    response = send(client, key=key)
    assert response.status_code == 401
    assert "API key" in error_of(response)
    assert records(client)[-1]["auth_ok"] is False


def test_missing_authorization_is_401(client: httpx.Client) -> None:
    response = client.post(SEND_PATH, json={"SerialNumber": SERIAL, "ToPhoneNumber": PHONE, "Message": "x"})
    assert response.status_code == 401


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(client: httpx.Client, content_type: str) -> None:
    body = json.dumps({"SerialNumber": SERIAL, "ToPhoneNumber": PHONE, "Message": "x"})
    response = client.post(SEND_PATH, content=body, headers={"Authorization": KEY, "Content-Type": content_type})
    assert response.status_code == 415


def test_content_type_parameters_are_accepted(client: httpx.Client) -> None:
    body = json.dumps({"SerialNumber": SERIAL, "ToPhoneNumber": PHONE, "Message": "x"})
    headers = {"Authorization": KEY, "Content-Type": "application/json; charset=utf-8"}
    assert client.post(SEND_PATH, content=body, headers=headers).status_code == 200


@pytest.mark.parametrize("field", ["SerialNumber", "ToPhoneNumber", "Message"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "Missing required field"), (12, "must be a string"), ("", "must not be empty")],
)
def test_bad_field_is_400_naming_it(client: httpx.Client, field: str, value: object, expected: str) -> None:
    body: dict[str, object] = {"SerialNumber": SERIAL, "ToPhoneNumber": PHONE, "Message": "x"}
    if value is None:
        del body[field]
    else:
        body[field] = value
    response = client.post(SEND_PATH, json=body, headers={"Authorization": KEY})
    assert response.status_code == 400
    message = error_of(response)
    assert field in message and expected in message


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_unreadable_body_is_400(client: httpx.Client, content: bytes) -> None:
    headers = {"Authorization": KEY, "Content-Type": "application/json"}
    assert client.post(SEND_PATH, content=content, headers=headers).status_code == 400


@pytest.mark.parametrize(
    "phone", ["15550001111", "+0155500011", "+1 555 000 1111", "+123456", "+1234567890123456", "+１５５５０００１１１１", "+15550001111\n"]
)
def test_non_e164_number_is_400(client: httpx.Client, phone: str) -> None:
    response = send(client, phone=phone)
    assert response.status_code == 400
    assert "ToPhoneNumber" in error_of(response)


def test_message_limit_is_1600_characters(client: httpx.Client) -> None:
    assert send(client, message="é" * 1600).status_code == 200
    response = send(client, message="a" * 1601)
    assert response.status_code == 400
    assert "1600" in error_of(response)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_is_405(client: httpx.Client, method: str) -> None:
    response = client.request(method, SEND_PATH, headers={"Authorization": KEY})
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    error_of(response)


def test_unknown_path_is_404_envelope(client: httpx.Client) -> None:
    response = client.post("/chat/Chatbot/SendTwilioMessages", json={}, headers={"Authorization": KEY})
    assert response.status_code == 404
    assert "SendTwilioMessages" in error_of(response)
    assert records(client) == []  # only the send path is recorded


def raw_exchange(base_url: str, payload: bytes) -> bytes:
    """Sends raw bytes and reads until the server closes the connection."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def send_bytes(message: str, connection: str = "keep-alive") -> bytes:
    body = json.dumps({"SerialNumber": SERIAL, "ToPhoneNumber": PHONE, "Message": message}).encode()
    return (
        f"POST {SEND_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n"
    ).encode() + body


def test_keep_alive_and_pipelining_on_one_connection(base_url: str, client: httpx.Client) -> None:
    answer = raw_exchange(base_url, send_bytes("one") + send_bytes("two") + send_bytes("three", "close"))

    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert [r["message"] for r in records(client)] == ["one", "two", "three"]


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"POST " + SEND_PATH.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"411"),
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nBad Header : y\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", b"413"),
    ],
)
def test_unacceptable_http_is_refused_and_closed(base_url: str, payload: bytes, status: bytes) -> None:
    answer = raw_exchange(base_url, payload)
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close" in answer


def test_expect_100_continue(base_url: str) -> None:
    payload = send_bytes("hi", "close").replace(b"Connection: close", b"Connection: close\r\nExpect: 100-continue")
    answer = raw_exchange(base_url, payload)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
