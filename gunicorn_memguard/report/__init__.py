"""Outputs, no decisions: log lines, the JSON event log, statsd, Prometheus."""
