"""Tests of mailgate.smtp."""
