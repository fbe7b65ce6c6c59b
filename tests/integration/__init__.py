"""Whole-server tests: a real `twistd mailgate` on loopback, real clients."""
