"""mailgate's tests; their layout mirrors mailgate/."""
