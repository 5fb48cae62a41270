"""The status API (aiohttp): windows, forecasts, decisions and their stream, overrides, metrics, the dashboard."""
