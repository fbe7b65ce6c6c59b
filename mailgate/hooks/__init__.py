"""The plugin manager and the calling of hooks that may be async."""
