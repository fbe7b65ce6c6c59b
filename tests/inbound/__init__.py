"""Tests of mailgate.inbound."""
