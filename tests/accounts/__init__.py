"""Tests of mailgate.accounts."""
