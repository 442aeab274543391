"""oaksend.worker: the service, everything that decides and sends.

The public API is re-exported by the top-level package: ``from oaksend import Producer``.
"""
