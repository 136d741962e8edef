"""The event log, its fan-out to subscribers, and the email outbox."""
