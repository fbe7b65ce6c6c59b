"""Accounts: the users file and password checking through twisted.cred."""
