"""Reserved for the aiohttp status API; nothing is served from here yet.

The latest windows are already mirrored to Redis (see
:mod:`surgegate.streams.store`) for the API to read.
"""
