"""The aiohttp status API (built by ``create_app(settings, ...)``)."""
