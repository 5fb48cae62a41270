"""Faust agents on the low-volume streams: window merge, forecast, decide and the Redis mirror (never per request)."""
