"""The status API (aiohttp): health, windows, forecasts, thresholds, decisions and their stream,
operator overrides, Prometheus metrics and the OpenAPI document. See :mod:`surgegate.api.app`."""
