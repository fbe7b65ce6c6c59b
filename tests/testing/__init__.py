"""Tests of mailgate.testing."""
