"""Tests of mailgate.ops."""
