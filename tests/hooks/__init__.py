"""Tests of mailgate.hooks."""
