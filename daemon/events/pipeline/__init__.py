"""From an accepted event to a journal record: normalize, fingerprint, facets, and the
digest of events accepted unread."""
