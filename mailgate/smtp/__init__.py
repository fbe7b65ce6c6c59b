"""The SMTP server: sessions, their commands, the DATA reader and AUTH."""
