"""The simulator: the very forecaster, policies and edge gate the agents run, on a simulated service."""
