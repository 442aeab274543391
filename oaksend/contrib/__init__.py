"""Integrations with application frameworks (`oaksend.contrib.django`)."""
