"""Admission at an edge, pure: token buckets fed by throttle decisions, and the edge's tally of what it saw."""
