"""The mail queue: submission into the journal, the flusher into Postgres, and the SQL that
reads and changes queued mail."""
