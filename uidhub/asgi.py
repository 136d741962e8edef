"""`uidhub.asgi:app` for uvicorn (one app per worker process)."""

from uidhub import logs
from uidhub.app import create_app
from uidhub.settings import Settings

# A worker spawned by `uvicorn --workers N` inherits no logging setup; `uidhub serve` passes its own
# log config to uvicorn, and `uvicorn uidhub.asgi:app` run by hand gets the same format here.
settings = Settings()
logs.configure(settings.log_format, force=False)

app = create_app(settings, tune_gc=True)
