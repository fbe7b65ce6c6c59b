"""Tests of mailgate.outbound."""
