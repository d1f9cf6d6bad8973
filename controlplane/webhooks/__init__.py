"""Outgoing webhooks on sandbox events: `events` (pure: which event a change is, the body,
the signature, the retry schedule) and `sender` (I/O: read the change log, POST, retry)."""
