"""The Celery app both baselines run on (bench/noop.py, bench/naive.py), configured alike.

Like oaksend's app (worker.delivery.app): JSON, no results, early ack, prefetch
multiplier 1, no events; so each baseline's figure is its task's cost, not its
configuration's.
"""

from __future__ import annotations

from celery import Celery


def baseline_app(name: str, broker_url: str, queue: str) -> Celery:
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=queue,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        task_send_sent_event=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
        broker_pool_limit=10,
    )
    return app
