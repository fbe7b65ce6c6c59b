"""Tests of mailgate.pop3."""
