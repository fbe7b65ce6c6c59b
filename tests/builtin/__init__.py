"""Tests of mailgate.builtin."""
