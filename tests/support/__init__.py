"""Helpers the tests share (test modules import these, never each other), and the hostile and broken inputs
they feed the flow. `tests/conftest.py` holds the fixtures."""
