"""Tests of mailgate.net."""
