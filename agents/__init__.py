"""Faust agents: they work on the low-volume streams (partials, windows, and
later forecasts and decisions), where tables, changelogs and rebalancing earn
their keep. The per-request path never goes through Faust."""
