"""Tests of mailgate.config."""
