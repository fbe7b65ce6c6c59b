"""Networking helpers: TLS contexts, DNS resolution, writing replies straight to the socket."""
