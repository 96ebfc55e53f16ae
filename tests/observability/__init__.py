"""Tests of what users see: dashboard, status, sd_notify, metrics, alert hook, units."""
