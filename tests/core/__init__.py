"""Tests of mailgate.core."""
