"""No Django models: oaksend's tables are its own (its Alembic migrations make them).

This module exists so that Django sends this app `post_migrate`, on which
`manage.py migrate` brings oaksend's tables up to date (apps.py).
"""
