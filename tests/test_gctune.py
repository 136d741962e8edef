"""uidhub.gctune: what a serving process does to garbage collection once it has started."""

from __future__ import annotations

import gc
from pathlib import Path

from tests.support.live import serve_in_loop
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.settings import Settings


async def test_the_lifespan_of_a_serving_app_freezes_start_up_and_raises_the_first_threshold(
    db: Database, tmp_path: Path
) -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        settings = Settings(database_url=db.url, export_dir=str(tmp_path / "exports"), gc_gen0_threshold=12_345)
        async with serve_in_loop(create_app(settings, db=db)):
            assert gc.get_threshold() == before  # an app built by a test or a tool leaves the collector alone
        gc.unfreeze()
        async with serve_in_loop(create_app(settings, db=db, tune_gc=True)):
            assert gc.get_threshold() == (12_345, before[1], before[2])
            assert gc.get_freeze_count() > 10_000  # the modules, the schema, the mappers
        gc.unfreeze()
        gc.set_threshold(*before)
        off = settings.model_copy(update={"gc_freeze": False})
        async with serve_in_loop(create_app(off, db=db, tune_gc=True)):
            assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()  # the test process's objects go back to being collected
        gc.set_threshold(*before)
