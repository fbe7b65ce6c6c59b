"""The `mailgate` command-line tool."""
