"""The event store in Postgres: the batch writer, partitions, retention, and the queries
the pages, API and CLI ask."""
