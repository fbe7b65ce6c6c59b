"""Tests of mailgate.app."""
