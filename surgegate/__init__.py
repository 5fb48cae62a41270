"""surgegate: a streaming control plane for LLM and AI inference services.

Pure logic (sketches, windowing, settings) lives in this package's own modules;
``surgegate.schemas`` holds the wire types, ``surgegate.streams`` the Kafka and
Redis I/O, ``surgegate.agents`` the Faust agents and ``surgegate.api`` the
HTTP API.
"""

__version__ = "0.1.0"
