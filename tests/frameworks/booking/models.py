"""The example Django project's one model (tests/frameworks/django_project.py)."""

from __future__ import annotations

from django.db import models


class Booking(models.Model):
    phone = models.CharField(max_length=20)

    class Meta:
        app_label = "booking"
