"""`uidhub.asgi:app` for uvicorn (one app per worker process)."""

from uidhub.app import create_app

app = create_app()
