"""egen: a self-hosted mail relay and error-event ingest in one asyncio daemon."""

__version__ = "0.1.0"
