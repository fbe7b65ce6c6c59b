"""The POP3 server over the Maildir store: sessions, their commands, streaming."""
