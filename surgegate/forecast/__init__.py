"""Online load forecasting: one small contract, several models, a selector.

Every forecaster here is pure and synchronous: time is passed in, nothing
touches Kafka or a clock, so the forecast agent, the evaluation command and
the tests drive the very same objects.
"""
