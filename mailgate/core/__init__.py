"""Plain data and rules every subsystem shares: envelopes, replies and errors, addresses, trace fields."""
