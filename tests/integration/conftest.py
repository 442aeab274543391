"""Fixtures shared by the HTTP tests (test_client_behaviour, test_http_calls, test_http_network)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.test_client_behaviour import Handler, RawServer


@pytest.fixture
def make_server() -> Iterator[Callable[[Handler], RawServer]]:
    """Raw HTTP servers of the test's own (each answers with the handler given), closed afterwards."""
    servers: list[RawServer] = []

    def make(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
