"""Mail authentication: SPF, DKIM and DMARC checks, DKIM signing and keys, SRS, the Authentication-Results field."""
