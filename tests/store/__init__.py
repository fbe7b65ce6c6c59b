"""Tests of mailgate.store."""
