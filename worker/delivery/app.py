"""The Celery app, built from Settings. Tasks carry message ids and a lease token, nothing else."""

from __future__ import annotations

from celery import Celery

from oaksend.worker.delivery.task import register
from oaksend.worker.settings import Settings


def make_app(settings: Settings) -> Celery:
    """A Celery app on the Redis broker, configured for a shallow, fair queue."""
    app = Celery("oaksend", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=settings.queue_name,
        # Early ack: a task lost with its worker is found again by the dispatcher's
        # lease rescue, and a task delivered twice is refused by the lease token.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
        broker_pool_limit=10,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.oaksend_settings = settings
    register(app, settings)
    return app
