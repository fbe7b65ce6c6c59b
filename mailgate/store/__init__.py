"""Local mailboxes on disk: Maildir writing and reading, durable primitives, group commit."""
