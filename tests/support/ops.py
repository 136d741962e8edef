"""Helpers for the operations tests: reading a Prometheus scrape, a recording SMTP server, a breach."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import Api


class Scrape:
    """One parsed /metrics body (prometheus_client.parser): sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), float(sample.value)))

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
        return sum(v for n, got, v in self.samples if n == name and all(got.get(k) == x for k, x in labels.items()))

    def names(self) -> set[str]:
        return {n for n, _labels, _v in self.samples}


async def scrape(api: Api) -> Scrape:
    response = await api.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


class Smtp:
    """aiosmtpd on a free loopback port; answers 451 to the first `fail_first` messages."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[Any] = []
        self._lock = threading.Lock()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return "451 4.3.0 try again"
            self.received.append(envelope)
        return "250 OK"


@contextmanager
def smtp_server(fail_first: int = 0) -> Iterator[Smtp]:
    handler = Smtp(fail_first)
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


BREACH_STEPS = [
    (
        'mutation($uid: String!) { linkAccount(input: {uid: $uid, quotaAmount: "100.00"}) { userErrors { code } } }',
        "linkAccount",
    ),
    (
        "mutation($uid: String!) { setWarningThreshold(input: {uid: $uid, percent: 50}) { userErrors { code } } }",
        "setWarningThreshold",
    ),
    (
        'mutation($uid: String!) { recordConsumption(input: {uid: $uid, amount: "60.00", idempotencyKey: "k-1"}) '
        "{ userErrors { code } } }",
        "recordConsumption",
    ),
]


async def breach(api: Api, uid: str) -> None:
    """Link `uid` with 100.00, warn at 50 %, consume 60.00: one BREACHED event and one queued email."""
    for query, field in BREACH_STEPS:
        data = await api.gql(query, {"uid": uid})
        assert data[field]["userErrors"] == [], data
