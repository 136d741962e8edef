"""`uidhub serve --workers 2` as a subprocess: metrics add up over workers, and every worker logs alike.

Before: workers were spawned without any logging configuration (INFO lines
vanished, errors had no timestamp, level or logger) and each worker counted
only for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.api import make_partner, make_token
from tests.support.db import REDIS_URL, needs_redis, sqlite_url_for
from tests.support.live import ROOT as ROOT_DIR
from tests.support.net import free_port
from tests.support.ops import Scrape
from uidhub.db import Database
from uidhub.models.enums import Role

REQUESTS = 60
PROBE = "query Probe { viewer { method } }"


@contextlib.contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("UIDHUB_", "PROMETHEUS_", "OTEL_"))}
    full.update(env)
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "uidhub.cli", "serve", "--workers", "2", "--port", str(port)],
            cwd=ROOT_DIR,
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 60  # a hang guard for a loaded machine
            while True:
                assert process.poll() is None, log.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


async def _token(url: str) -> str:
    db = Database(url)
    try:
        return await make_token(db, await make_partner(db, "P-MAIN"), Role.ADMIN)
    finally:
        await db.dispose()


async def _probe(address: str, token: str, n: int) -> None:
    # A client (a connection) per request, so that requests spread over the workers.
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"http://{address}/graphql",
            json={"query": PROBE},
            headers={"Authorization": f"Bearer {token}", "X-Request-Id": f"test-req-{n:04d}"},
        )
    assert response.status_code == 200 and "errors" not in response.json(), response.text
    assert response.headers["x-request-id"] == f"test-req-{n:04d}"


async def _probes(address: str, token: str) -> None:
    limit = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        async with limit:
            await _probe(address, token, n)

    await asyncio.gather(*(one(n) for n in range(REQUESTS)))


def _per_worker(directory: Path, tmp_path: Path) -> list[float]:
    """Probe counts of each worker, read from its own multiprocess file."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = []
    for path in sorted(directory.glob("counter_*.db")):
        alone = tmp_path / f"alone-{path.stem}"
        alone.mkdir()
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts.append(
            Scrape(generate_latest(registry).decode()).value("uidhub_graphql_requests_total", operation="Probe")
        )
    return counts


@needs_redis
async def test_two_workers_metrics_add_up_and_logs_are_json_lines(sqlite_template: Path, tmp_path: Path) -> None:
    url = sqlite_url_for(sqlite_template, tmp_path)
    token = await _token(url)
    prom = tmp_path / "prom"
    log = tmp_path / "server.log"
    env = {
        "UIDHUB_DATABASE_URL": url,
        "UIDHUB_REDIS_URL": str(REDIS_URL),
        "UIDHUB_METRICS": "true",
        "UIDHUB_LOG_FORMAT": "json",
        "UIDHUB_EXPORT_DIR": str(tmp_path / "exports"),
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
    }
    with serve(env, log) as address:
        await _probes(address, token)
        scrapes = []
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(4):  # whichever worker answers, the scrape has everybody's counts
                response = await client.get(f"http://{address}/metrics")
                assert response.status_code == 200
                scrapes.append(Scrape(response.text))
        per_worker = _per_worker(prom, tmp_path)
    for scraped in scrapes:
        assert scraped.value("uidhub_graphql_requests_total", type="query", operation="Probe") == REQUESTS
    assert sum(per_worker) == REQUESTS
    assert len([c for c in per_worker if c > 0]) == 2, per_worker  # both workers served, and both were counted

    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message", "request_id", "operation", "partner"} <= record.keys()
    access = [r for r in records if r["logger"] == "uvicorn.access" and (r["request_id"] or "").startswith("test-req")]
    assert len(access) == REQUESTS
    assert all(r["level"] == "INFO" for r in access)
    # Application INFO lines of the workers are no longer lost.
    assert any(r["logger"].startswith("uidhub.notifications") and r["level"] == "INFO" for r in records), records[:20]
    assert "uh_" not in log.read_text()  # no token in the log


@needs_redis
async def test_two_workers_text_logs_have_time_level_logger_and_request_id(
    sqlite_template: Path, tmp_path: Path
) -> None:
    url = sqlite_url_for(sqlite_template, tmp_path)
    token = await _token(url)
    log = tmp_path / "server.log"
    env = {
        "UIDHUB_DATABASE_URL": url,
        "UIDHUB_REDIS_URL": str(REDIS_URL),
        "UIDHUB_EXPORT_DIR": str(tmp_path / "exports"),
    }
    with serve(env, log) as address:
        await _probe(address, token, 7)
    text = log.read_text()
    line = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR|DEBUG) [\w.]+ \[[^\]]+\]: .+$"
    assert all(re.match(line, row) for row in text.splitlines() if row.strip()), text
    assert re.search(r"INFO uvicorn\.access \[test-req-0007\]: .*POST /graphql", text), text
    assert re.search(r"INFO uidhub\.notifications\.outbox \[-\]: SMTP is not configured", text), text
