"""Helpers shared by the tests: running gateways, fake servers, session harnesses."""
