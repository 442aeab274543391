"""The API served for real: uvicorn on a free port in a thread of the test process, over a migrated outbox."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support import free_port, wait_until

#: OAKSEND_KEY_HASH_SECRET of the tests: webhook secrets are derived from it.
SERVER_SECRET = "test-server-secret-3f9a"


@pytest.fixture
def api_settings(database_url: str, redis_url: str) -> Any:
    from oaksend.worker.settings import Settings

    return Settings(database_url=database_url, redis_url=redis_url, _env_file=None,  # type: ignore[call-arg]
                    key_hash_secret=SERVER_SECRET, redis_prefix=f"t{uuid.uuid4().hex[:8]}",
                    webhook_retry_first_s=0.3, webhook_poll_s=0.05)


@pytest.fixture
def server(api_settings: Any) -> Iterator[str]:
    """The base URL of the API (`.../v1`), served by uvicorn."""
    import uvicorn
    from fastapi import FastAPI

    from oaksend.web.api import create_api

    root = FastAPI()
    api = create_api(api_settings)
    root.mount("/v1", api)  # as the dashboard mounts it
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, 10, what="uvicorn started")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        srv.should_exit = True
        thread.join(10)
        api.state.api.close()


@pytest.fixture
def make_key(outbox: Any) -> Callable[..., str]:
    """An API key (the token) with these scopes, chatbots and request limit."""
    from oaksend.worker.apikeys import new_key
    from oaksend.worker.clock import utcnow

    def make(scopes: tuple[str, ...] = ("send", "read", "operate"), chatbots: list[str] | None = None,
             rate_limit: int | None = None) -> str:
        token, prefix, digest = new_key()
        outbox.create_key(prefix=prefix, token_hash=digest, name="test", scopes=scopes, chatbots=chatbots,
                          rate_limit=rate_limit, actor="tests", now=utcnow())
        return token

    return make


@pytest.fixture
def client(server: str, make_key: Callable[..., str]) -> Iterator[httpx.Client]:
    """An HTTP client with a key of every scope but admin, on every chatbot."""
    with httpx.Client(base_url=server, headers={"authorization": f"Bearer {make_key()}"}, timeout=30) as c:
        yield c
