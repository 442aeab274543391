"""The call lease, the outcome-write retries and the response deadline nest, or start-up refuses."""

from __future__ import annotations

import pytest

from oaksend.errors import ConfigError
from oaksend.worker.settings import CALL_LEASE_MARGIN_S, Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_default_call_lease_is_derived_from_the_other_timeouts() -> None:
    s = settings(connect_timeout_s=5, read_timeout_s=15, max_token_wait_s=1, record_retry_s=300)
    assert s.response_deadline_s == 20
    # ... and the database's bounds: the last write may wait for a connection and a statement.
    assert s.call_lease == 1 + 20 + 300 + 5 + 15 + CALL_LEASE_MARGIN_S
    s.check_timeouts()
    assert settings(db_statement_timeout_s=60).call_lease == s.call_lease + 45
    # Longer write retries make a longer lease: a worker never writes after its lease.
    assert settings(record_retry_s=600).call_lease > s.call_lease


@pytest.mark.parametrize("values", [
    {"call_lease_s": 60},  # shorter than 1 + 20 + 300 + margin
    {"call_lease_s": 400, "record_retry_s": 400},
    {"call_lease_s": 100, "record_retry_s": 10, "read_timeout_s": 90},
])
def test_a_call_lease_shorter_than_what_it_must_cover_is_refused(values: dict[str, float]) -> None:
    with pytest.raises(ConfigError) as err:
        settings(**values).check_timeouts()
    text = str(err.value)
    for name in ("OAKSEND_CALL_LEASE_S", "OAKSEND_RECORD_RETRY_S", "OAKSEND_READ_TIMEOUT_S",
                 "OAKSEND_CONNECT_TIMEOUT_S", "OAKSEND_MAX_TOKEN_WAIT_S", "OAKSEND_DB_CONNECT_TIMEOUT_S",
                 "OAKSEND_DB_STATEMENT_TIMEOUT_S"):
        assert name in text
    assert "\n" not in text


def test_a_long_enough_call_lease_is_accepted() -> None:
    settings(call_lease_s=1000).check_timeouts()


def test_the_heartbeat_ttl_must_be_shorter_than_the_call_lease() -> None:
    with pytest.raises(ConfigError, match="OAKSEND_WORKER_HEARTBEAT_TTL_S"):
        settings(worker_heartbeat_ttl_s=50, record_retry_s=1, connect_timeout_s=1, read_timeout_s=1,
                 max_token_wait_s=0, db_connect_timeout_s=1, db_statement_timeout_s=1,
                 call_lease_s=40).check_timeouts()
