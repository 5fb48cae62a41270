"""surgegate's pure core (telemetry, forecast, control, admission, llm, sim), settings and CLI.

The top-level folders install as sub-packages: ``schemas/`` as ``surgegate.schemas``
(wire types), ``streams/`` (Kafka and Redis plumbing), ``agents/`` (Faust
agents), ``api/`` (status API), ``edge/`` (edge gate and gateway), ``gpu/``
(scaling subscriber) and ``devtools/`` (embedded services, fake LLM, demo,
replay). Lower layers never import higher ones: pure logic -> plumbing ->
agents, API, edge and GPU side -> CLI.
"""

__version__ = "0.1.0"
