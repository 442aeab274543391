"""oaksend.contrib.django: messages enqueued in Django's transaction, on PostgreSQL and SQLite, then sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import API_KEY, CHATBOT, ROOT, wait_until

pytest.importorskip("django")

PROJECT = Path(__file__).with_name("django_project.py")


def run_project(database_url: str, redis_url: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, str(PROJECT), database_url, redis_url, CHATBOT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_django_transaction_decides_and_a_worker_sends(database_url: str, redis_url: str, outbox: Any,
                                                        make_stack: Any, sandbox: Any) -> None:
    out = run_project(database_url, redis_url)
    assert out["bookings"] == 2  # the rolled-back booking is gone
    assert out["refused"] == "to"
    ids = {out["committed"], out["after_refusal"], out["autocommit"]}
    assert len(ids) == 3
    with outbox.session() as s:
        from sqlalchemy import select

        from oaksend.models.tables import Message

        rows = s.execute(select(Message.id, Message.to_phone)).all()
    # Exactly the committed messages: the rolled-back one left no row.
    assert {r.id for r in rows} == ids
    assert sorted(r.to_phone for r in rows) == ["+14155550101", "+14155550103", "+14155550104"]
    make_stack(workers=1)
    wait_until(lambda: len(sandbox.requests()) >= 3, 30, what="the three messages to reach the API")
    assert sorted(r["to_phone_number"] for r in sandbox.requests()) == ["+14155550101", "+14155550103",
                                                                        "+14155550104"]


def test_manage_py_oaksend_runs_the_cli_on_djangos_database(database_url: str, redis_url: str) -> None:
    run_project(database_url, redis_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env["PYTHONPATH"] = str(ROOT)
    script = ("import sys; sys.argv=['manage.py','oaksend','stats','--json'];"
              f"from tests.frameworks.django_project import configure; configure({database_url!r}, {redis_url!r});"
              "from django.core.management import execute_from_command_line; execute_from_command_line(sys.argv)")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert API_KEY not in done.stdout
    stats = json.loads(done.stdout)
    assert stats  # the stats of the three messages the project enqueued
