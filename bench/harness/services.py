"""Redis and PostgreSQL as the benchmarks use them: checked before a run, emptied or created fresh, dropped after."""

from __future__ import annotations

from typing import Any

from bench.harness.core import EXIT_UNAVAILABLE, BenchError


def check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis is not reachable at {url} ({type(exc).__name__}: {exc})", EXIT_UNAVAILABLE) from None
    finally:
        client.close()


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


def pg_engine(url: str) -> Any:
    """An AUTOCOMMIT engine (for CREATE/DROP DATABASE and VACUUM), psycopg 3 whatever the URL says."""
    from sqlalchemy import create_engine

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


def check_postgres(admin_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    engine = pg_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise BenchError(f"PostgreSQL is not reachable at {admin_url} ({detail})", EXIT_UNAVAILABLE) from None
    finally:
        engine.dispose()


def fresh_postgres(admin_url: str, name: str) -> str:
    """Drop and create database `name` next to the admin database; return its URL."""
    from sqlalchemy import text

    engine = pg_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_postgres(admin_url: str, *names: str) -> None:
    """Drop the databases `names` next to the admin database (those missing are skipped)."""
    from sqlalchemy import text

    engine = pg_engine(admin_url)
    try:
        with engine.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
