"""Getting messages to the API: the Celery app and task, the dispatcher, limits, classification, transitions."""
