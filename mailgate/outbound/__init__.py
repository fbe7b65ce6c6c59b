"""The outbound queue: spool, scheduler, retries, bounces (DSN) and the SMTP transport."""
