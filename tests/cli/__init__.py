"""Tests of mailgate.cli."""
