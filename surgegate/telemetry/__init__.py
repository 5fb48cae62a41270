"""Telemetry, pure: scopes, latency sketches, event validation, windows, edge summaries and trace files."""
