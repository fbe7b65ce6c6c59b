"""The running gateway: twistd options, the service and its wiring."""
