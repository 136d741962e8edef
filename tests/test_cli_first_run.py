"""A new user's first run (issue 10 items 8, 10, 11, 13): the console script as a subprocess, as they would run it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import make_partner
from tests.support.net import free_port
from tests.test_cli import UIDHUB, assert_one_line_failure, run
from uidhub.cli import _parser
from uidhub.db import Database
from uidhub.migrate import Migration

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- item 10: a busy port


async def test_serve_on_a_busy_port_fails_in_one_line_before_doing_anything(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(tmp_path, "serve", "--port", str(port))
    assert_one_line_failure(result)
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr.lower()
    assert "serving" not in result.stdout
    assert not (tmp_path / "cli.db").exists(), "nothing ran before the port check: not even the migration"


# ---------------------------------------------------------------- item 11: migrate says what it did


async def test_migrate_says_whether_it_created_or_found_the_schema_current(tmp_path: Path) -> None:
    first = run(tmp_path, "migrate")
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"database schema created at revision \S+\n", first.stdout), first.stdout
    second = run(tmp_path, "migrate")
    assert second.returncode == 0, second.stderr
    revision = first.stdout.split()[-1]
    assert second.stdout == f"database schema already current (revision {revision})\n"


def test_an_upgrade_names_both_revisions() -> None:
    assert Migration("0001", "0003").describe() == "database schema upgraded from revision 0001 to 0003"
    assert Migration(None, "0001").describe() == "database schema created at revision 0001"
    assert Migration("0002", "0002").describe() == "database schema already current (revision 0002)"


# ---------------------------------------------------------------- item 13: help texts, skip reasons


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_option_of_every_subcommand_has_a_help_text(command: str) -> None:
    parser = _subcommands()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {action.option_strings}: no help"


def test_create_token_help_shows_a_line_for_each_option(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(UIDHUB), "create-token", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for option in ("--partner", "--role", "--method", "--operator-uid", "--operator-name", "--ram", "--account"):
        [index] = [n for n, ln in enumerate(lines) if ln.strip().startswith(option)]
        # "  --option METAVAR   help text", or the help on the next, further indented line after a long metavar
        same_line = len(re.split(r"\s{2,}", lines[index].strip())) >= 2
        next_line = (
            index + 1 < len(lines)
            and lines[index + 1].startswith(" " * 8)
            and not lines[index + 1].strip().startswith("-")
        )
        assert same_line or next_line, "\n".join(lines[index : index + 2])


def test_the_test_summary_says_why_tests_were_skipped(tmp_path: Path) -> None:
    """pytest with the project's configuration lists each skip with its reason (`-rs`)."""
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n@pytest.mark.skip(reason='needs the moon')\ndef test_skipped():\n    pass\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert "SKIPPED [1]" in result.stdout and "needs the moon" in result.stdout, result.stdout


# ---------------------------------------------------------------- item 8: serve --demo, first start and restart


@contextlib.asynccontextmanager
async def _serve_demo(tmp_path: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UIDHUB_")}
    env["UIDHUB_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"
    env["UIDHUB_EXPORT_DIR"] = str(tmp_path / "exports")
    process = await asyncio.create_subprocess_exec(
        str(UIDHUB),
        "serve",
        "--demo",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 30)
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _read_until(
    process: asyncio.subprocess.Process, lines: list[str], pattern: str, *, seen: int = 0, timeout: float = 240.0
) -> None:
    """Collect output lines until one from index `seen` on matches `pattern` (a hang guard, not a speed check)."""
    assert process.stdout is not None
    async with asyncio.timeout(timeout):
        while not any(re.search(pattern, line) for line in lines[seen:]):
            raw = await process.stdout.readline()
            assert raw, "the server exited:\n" + "\n".join(lines)
            lines.append(raw.decode().rstrip("\n"))


def _banner(lines: list[str]) -> list[str]:
    """The framed block printed once the server listens."""
    rules = [n for n, line in enumerate(lines) if re.fullmatch(r"={20,}", line)]
    assert len(rules) == 2, "\n".join(lines)
    return lines[rules[0] : rules[1] + 1]


async def _run_printed(command: str, tmp_path: Path) -> str:
    """Run the printed create-token command in a shell, as a user pasting it would; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UIDHUB_")}
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def _viewer(port: int, token: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": "{ viewer { method } }"},
            headers={"Authorization": f"Bearer {token}"},
        )
    return response.json()


async def test_serve_demo_prints_a_usable_token_or_command_last_on_every_start(tmp_path: Path) -> None:
    port = free_port()
    # First start: the data set is loaded, the token is in the banner after uvicorn's start-up lines.
    first: list[str] = []
    async with _serve_demo(tmp_path, port) as process:
        await _read_until(process, first, r"^={20,}$")
        await _read_until(process, first, r"^={20,}$", seen=len(first))
        await _read_until(process, first, r"kept PENDING")
        banner = _banner(first)
        started = max(n for n, line in enumerate(first) if "Uvicorn running on" in line)
        assert first.index(banner[0]) > started, "the banner comes after the server's start-up lines"
        [token] = [line.strip() for line in banner if line.strip().startswith("uh_")]
        assert (await _viewer(port, token)) == {"data": {"viewer": {"method": "PLATFORM"}}}
        assert not any("alembic" in line for line in first), "no migration noise"
    # Restart: nothing is loaded again; the banner carries the full create-token command, which works as printed.
    second: list[str] = []
    async with _serve_demo(tmp_path, port) as process:
        await _read_until(process, second, r"^={20,}$")
        await _read_until(process, second, r"^={20,}$", seen=len(second))
        await _read_until(process, second, r"kept PENDING")
        banner = _banner(second)
        started = max(n for n, line in enumerate(second) if "Uvicorn running on" in line)
        assert second.index(banner[0]) > started
        [command] = [line.strip() for line in banner if "create-token" in line and "--partner" in line]
        assert shlex.split(command)[-4:] == ["--partner", "5010000000000001", "--role", "ADMIN"]
        token = await _run_printed(command, tmp_path)
        assert (await _viewer(port, token)) == {"data": {"viewer": {"method": "PLATFORM"}}}
    for output in (first, second):
        # The queued (PENDING) alert emails are summed up in one line per start, not one line each.
        assert sum("kept PENDING" in line for line in output) == 1, "\n".join(output)
        assert not any(line.startswith("notification ") for line in output)


async def test_serve_demo_on_a_database_with_other_data_loads_nothing(sqlite_db: Database) -> None:
    """Not empty and no demo distributor: nothing is loaded and no token is minted; the banner says what to run."""
    from uidhub.demo import load_demo
    from uidhub.settings import Settings

    await make_partner(sqlite_db, "P-REAL")
    settings = Settings(_env_file=None, database_url=sqlite_db.url)  # type: ignore[call-arg]
    result = await load_demo(sqlite_db, settings, accounts=5, only_if_empty=True)
    assert not result.loaded and not result.has_distributor and result.token is None
    banner = result.banner(settings)
    assert "create-token --partner <partner uid> --role ADMIN" in banner and "uh_" not in banner


async def test_pending_emails_without_smtp_are_one_line_per_start(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.test_outbox import add_notifications, make_settings
    from uidhub.notifications.outbox import OutboxSender

    ids = await add_notifications(db, 5)
    with caplog.at_level(logging.INFO, logger="uidhub.notifications.outbox"):
        for _start in range(2):  # a restart: a new sender
            sender = OutboxSender(db, make_settings(None))
            assert await sender.run_once() == 0
            assert await sender.run_once() == 0  # nothing new: nothing more said
    pending = [r.getMessage() for r in caplog.records if "kept PENDING" in r.getMessage()]
    assert (
        pending
        == [f"5 notifications kept PENDING (no SMTP), ids {ids[0]} to {ids[-1]}; the notifications query lists them"]
        * 2
    )
