"""The database layer: pool, embedded Postgres, migrations, and one query module per table."""

from daemon.db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from daemon.db.migrate import MigrationError, migrate
from daemon.db.pool import Database, DatabaseError
from daemon.urlmask import mask_url_password as mask_password

__all__ = [
    "Database",
    "DatabaseError",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "MigrationError",
    "mask_password",
    "migrate",
]
