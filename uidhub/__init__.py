"""uidhub's composition root: settings, database, ASGI app, CLI and migrations."""
