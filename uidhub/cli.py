"""The `uidhub` command line (OPERATIONS.md).

Bad arguments and an unreachable database end in a one-line message on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any, NoReturn

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from uidhub import logs, metrics
from uidhub.db import Database, null_pool_engine
from uidhub.models import Account, Partner
from uidhub.models.enums import OperationMethod, PartnerKind, Role
from uidhub.resolvers.auth import REVOKED_TOPIC, TokenLookupError, TokenRow, create_token, list_tokens, revoke_token
from uidhub.runtime import Runtime
from uidhub.settings import Settings


class CliError(Exception):
    """A failure to report in one line."""


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr (argparse would print the usage first); subcommands inherit this."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="uidhub", description="GraphQL backend for cloud channel partners.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate, then serve HTTP and websockets")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: %(default)s)")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes (default: %(default)s; above 1 needs UIDHUB_REDIS_URL)"
    )
    serve.add_argument("--demo", action="store_true", help="load the demo data set first (if the database is empty)")

    sub.add_parser("migrate", help="bring the database to the latest schema and say what changed")

    partner = sub.add_parser("create-partner", help="create a partner; prints its UID")
    partner.add_argument("--uid", required=True, help="the partner's UID (1 to 64 characters, unique)")
    partner.add_argument("--name", required=True, help="the partner's display name")
    partner.add_argument("--kind", required=True, choices=[k.value for k in PartnerKind], help="the partner kind")
    partner.add_argument("--parent", help="UID of the DISTRIBUTOR a RESELLER belongs to")
    partner.add_argument(
        "--alert-email", action="append", default=[], help="an address that receives quota alerts (repeat for several)"
    )

    token = sub.add_parser("create-token", help="create an operator token; prints only the token")
    token.add_argument("--partner", required=True, help="UID of the partner the token acts for")
    token.add_argument("--role", required=True, choices=[r.value for r in Role], help="what the token may do")
    token.add_argument(
        "--method",
        default="PLATFORM",
        choices=["PLATFORM", "API"],
        help="the operation method recorded in the audit log (default: %(default)s)",
    )
    token.add_argument("--operator-uid", help="operator UID recorded in the audit log (default: the partner's UID)")
    token.add_argument("--operator-name", help="operator name recorded in the audit log (default: the partner's name)")
    token.add_argument("--ram", action="store_true", help="the operator is a RAM (sub-)user")
    token.add_argument("--account", help="UID of the linked account an END_USER token is for (END_USER only)")

    export = sub.add_parser("export-schema", help="print the served GraphQL schema (SDL)")
    export.add_argument("--output", help="write to this file instead of stdout")

    demo = sub.add_parser("demo", help="load the demo data set")
    demo.add_argument("--accounts", type=int, default=300, help="how many accounts to link (default: %(default)s)")
    _add_token_commands(sub)

    bulk = sub.add_parser("import-accounts", help="link accounts in bulk from a CSV file (all or nothing)")
    bulk.add_argument("--partner", required=True, help="the partner UID the accounts are linked to")
    bulk.add_argument(
        "file", help="UTF-8 CSV: uid,nickname,business_manager,remarks,master_uid,quota_amount,warning_percent"
    )
    return parser


def _add_token_commands(sub: argparse._SubParsersAction) -> None:
    listing = sub.add_parser(
        "list-tokens",
        help="list tokens: id, prefix, partner, role, method, operator, account, created, revoked (never the secret)",
    )
    listing.add_argument("--partner", help="only this partner's tokens (its UID)")
    listing.add_argument("--active", action="store_true", help="only tokens that are not revoked")

    revoke = sub.add_parser(
        "revoke-token",
        help="revoke a token at once: requests with it get 401, its open websockets are closed with 4403",
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, help="the token's id, as list-tokens prints it")
    which.add_argument(
        "--prefix", help="the token's prefix as list-tokens prints it (at least 7 characters), or the whole token"
    )


async def _create_partner(db: Database, args: argparse.Namespace) -> str:
    # lazy: only this command needs it; the CLI starts without loading the app
    from uidhub.resolvers.accounts import check_email

    for email in args.alert_email:
        if check_email(email) is not None:
            raise CliError(f"--alert-email {email!r} is not an email address")
    if not args.uid.strip() or len(args.uid) > 64:
        raise CliError("--uid must be 1 to 64 characters")
    async with db.write() as session:
        if await session.scalar(select(Partner.id).where(Partner.uid == args.uid)) is not None:
            raise CliError(f"partner {args.uid} already exists")
        parent_id = None
        if args.parent:
            parent = await session.scalar(select(Partner).where(Partner.uid == args.parent))
            if parent is None:
                raise CliError(f"no partner {args.parent}")
            if parent.kind is not PartnerKind.DISTRIBUTOR or args.kind != PartnerKind.RESELLER.value:
                raise CliError("only a RESELLER may have a parent, and the parent must be a DISTRIBUTOR")
            parent_id = parent.id
        session.add(
            Partner(
                uid=args.uid,
                name=args.name,
                kind=PartnerKind(args.kind),
                parent_id=parent_id,
                alert_emails=list(args.alert_email),
            )
        )
    return args.uid


async def _create_token(db: Database, args: argparse.Namespace) -> str:
    role = Role(args.role)
    async with db.write() as session:
        partner = await session.scalar(select(Partner).where(Partner.uid == args.partner))
        if partner is None:
            raise CliError(f"no partner {args.partner}")
        account = None
        if args.account:
            account = await session.scalar(
                select(Account).where(Account.uid == args.account, Account.partner_id == partner.id)
            )
            if account is None:
                raise CliError(f"no account {args.account} linked to partner {args.partner}")
        try:
            return await create_token(
                session,
                partner=partner,
                role=role,
                method=OperationMethod(args.method),
                operator_uid=args.operator_uid,
                operator_name=args.operator_name,
                is_ram=args.ram,
                account=account,
            )
        except ValueError as exc:
            raise CliError(str(exc)) from None


def _format_tokens(rows: Sequence[TokenRow], tz: tzinfo) -> str:
    """A table with a header; times in the display timezone; "-" for what a token does not have."""

    def when(value: datetime | None) -> str:
        return value.astimezone(tz).isoformat(timespec="seconds") if value is not None else "-"

    header = ("ID", "PREFIX", "PARTNER", "ROLE", "METHOD", "OPERATOR", "ACCOUNT", "CREATED", "REVOKED")
    table = [header] + [
        (
            str(r.id),
            f"{r.prefix}…" if r.prefix else "-",
            r.partner_uid,
            r.role.value,
            r.method.value,
            f"{r.operator_uid} ({'RAM' if r.is_ram else r.operator_name})",
            r.account_uid or "-",
            when(r.created_at),
            when(r.revoked_at),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table)


async def _run_token_command(runtime: Runtime, args: argparse.Namespace) -> str:
    """list-tokens and revoke-token. A revocation wakes the servers (through Redis when configured)."""
    db, settings = runtime.db, runtime.settings
    if args.command == "list-tokens":
        async with db.read() as session:
            if args.partner and await session.scalar(select(Partner.id).where(Partner.uid == args.partner)) is None:
                raise CliError(f"no partner {args.partner}")
            rows = await list_tokens(session, partner_uid=args.partner, active_only=args.active)
        return _format_tokens(rows, settings.tz)
    try:
        async with db.write() as session:
            token, revoked = await revoke_token(session, token_id=args.id, prefix=args.prefix)
            label = f"token {token.id}" + (f" ({token.prefix}…)" if token.prefix else "")
            revoked_at = token.revoked_at
    except TokenLookupError as exc:
        raise CliError(str(exc)) from None
    assert revoked_at is not None
    if not revoked:
        return f"{label} was already revoked at {revoked_at.astimezone(settings.tz).isoformat(timespec='seconds')}"
    await runtime.bus.publish(REVOKED_TOPIC)  # after the commit: servers re-check their websockets now
    return f"revoked {label}"


async def _run_db_command(settings: Settings, args: argparse.Namespace) -> str:
    from uidhub.migrate import upgrade  # lazy: only this command needs it; the CLI starts without loading the app

    migration = await upgrade(settings.database_url)
    if args.command == "migrate":
        return migration.describe()
    # The same runtime as a server's: writes wake the servers' subscribers through Redis when it is configured.
    runtime = Runtime.open(settings)
    try:
        if args.command == "create-partner":
            return await _create_partner(runtime.db, args)
        if args.command == "create-token":
            return await _create_token(runtime.db, args)
        if args.command in ("list-tokens", "revoke-token"):
            return await _run_token_command(runtime, args)
        if args.command == "demo":
            # lazy: only this command needs it; the CLI starts without loading the app
            from uidhub.demo import load_demo

            result = await load_demo(runtime.db, settings, accounts=args.accounts)
            return result.describe(settings, _uidhub_command(settings))
        raise CliError(f"unknown command {args.command}")
    finally:
        await runtime.close()


def connection_budget(settings: Settings, workers: int) -> int:
    """The most connections `workers` server processes open (request pool, its overflow, background pool)."""
    per_process = settings.db_pool_size + settings.db_max_overflow + settings.db_background_pool_size
    return workers * per_process


async def connection_budget_warning(settings: Settings, workers: int) -> str | None:
    """A warning when the pools of `workers` processes exceed what PostgreSQL admits; None when they fit.

    Past `max_connections` minus the reserved slots, new connections fail with
    "too many clients" (answered 503), so the pools should be made smaller.
    """
    if settings.is_sqlite:
        return None

    engine = null_pool_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            maximum = int((await conn.exec_driver_sql("SHOW max_connections")).scalar_one())
            reserved = int((await conn.exec_driver_sql("SHOW superuser_reserved_connections")).scalar_one())
    finally:
        await engine.dispose()
    budget = connection_budget(settings, workers)
    if budget <= maximum - reserved:
        return None
    return (
        f"{workers} worker(s) may open {budget} database connections (UIDHUB_DB_POOL_SIZE + UIDHUB_DB_MAX_OVERFLOW"
        f" + UIDHUB_DB_BACKGROUND_POOL_SIZE per worker) but PostgreSQL admits {maximum - reserved}"
        f" (max_connections {maximum} - {reserved} reserved): lower the pool settings"
    )


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    """Check the port, migrate, load the demo data; then serve, printing the URL (and token) once listening."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines are set-up noise; one summary instead
    from uidhub.migrate import upgrade  # lazy: only this command needs it; the CLI starts without loading the app

    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    if args.workers > 1 and settings.is_sqlite:
        logging.getLogger("uidhub").warning("several workers on SQLite: writes queue on one file lock")
    if args.workers > 1 and not settings.redis_url:
        raise CliError("--workers above 1 needs UIDHUB_REDIS_URL so that every worker delivers every event")
    _check_port(args.host, args.port)
    print(asyncio.run(upgrade(settings.database_url)).describe(), flush=True)
    warning = asyncio.run(connection_budget_warning(settings, args.workers))
    if warning:
        logging.getLogger("uidhub").warning("%s", warning)
    if "console_url" not in settings.model_fields_set:
        # Links printed and mailed point at where this server actually listens.
        settings = settings.model_copy(update={"console_url": f"http://{args.host}:{args.port}"})
    banner = f"uidhub serving on http://{args.host}:{args.port}/graphql"
    if args.demo:
        from uidhub.demo import load_demo  # lazy: only this command needs it; the CLI starts without loading the app

        async def demo() -> str:
            db = Database(settings.database_url)
            try:
                result = await load_demo(db, settings, accounts=300, only_if_empty=True)
            finally:
                await db.dispose()
            return result.banner(settings, _uidhub_command(settings))

        banner = asyncio.run(demo())
    _run_server(settings, args, banner)


def _check_port(host: str, port: int) -> None:
    """Bind and release the address as uvicorn will (SO_REUSEADDR) before migrating, loading or printing anything.

    A busy port then ends in one line and a non-zero exit, instead of "serving" followed by background work and a
    failure further down the log.
    """
    import socket

    if not 1 <= port <= 65535:
        raise CliError(f"--port {port} is not a TCP port (1 to 65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _run_server(settings: Settings, args: argparse.Namespace, banner: str) -> None:
    """uvicorn with the request budget, websocket message cap, log config and metrics of `settings`."""
    # lazy: only this command needs it; the CLI starts without loading the app
    from uidhub.app import MAX_WS_MESSAGE_CHARS

    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "log_level": "info",
        "lifespan": "on",
        # Requests are cancelled at their time budget and never block the loop, so on SIGTERM
        # in-flight requests finish within the budget; past it (plus a margin) uvicorn cancels them.
        "timeout_graceful_shutdown": settings.request_timeout_seconds + 2,
        # A websocket message above the HTTP body limit is refused (1009) before it is buffered whole.
        "ws_max_size": MAX_WS_MESSAGE_CHARS,
        "log_config": logs.logging_config(settings.log_format),  # applied in every worker process
    }
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(metrics.serving(settings, args.workers))
    except OSError as exc:
        raise CliError(f"cannot serve metrics on port {settings.metrics_port}: {exc.strerror or exc}") from None
    with stack:
        _run_uvicorn(args, banner, options)


def _run_uvicorn(args: argparse.Namespace, banner: str, options: dict[str, Any]) -> None:
    """With one worker the banner comes right after uvicorn's own start-up lines, as the last thing shown."""
    import uvicorn

    if args.workers > 1:  # the supervisor cannot tell when its workers listen: print first
        print(banner, flush=True)
        uvicorn.run("uidhub.asgi:app", **options)
        return

    class BannerServer(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(banner, flush=True)

    server = BannerServer(uvicorn.Config("uidhub.asgi:app", **options))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise CliError(f"the server did not start on {args.host}:{args.port} (see the log above)")


def _uidhub_command(settings: Settings) -> str:
    """How the user ran `uidhub` (e.g. `.venv/bin/uidhub`), with the database it used, for commands we print."""
    import shlex
    from pathlib import Path

    from sqlalchemy.engine import make_url

    program = sys.argv[0] if Path(sys.argv[0]).name == "uidhub" else "uidhub"
    command = shlex.quote(program)
    url = settings.database_url
    if url != Settings.model_fields["database_url"].default and make_url(url).password is None:
        command = f"UIDHUB_DATABASE_URL={shlex.quote(url)} {command}"
    return command


def _import_accounts(settings: Settings, args: argparse.Namespace) -> int:
    """`import-accounts`: 0 and the count when every row is linked; 1 and `line N: CODE message` lines otherwise."""
    from pathlib import Path

    # lazy: only this command needs it; the CLI starts without loading the app
    from uidhub.import_accounts import ImportFailed, import_accounts, terminal_progress
    from uidhub.migrate import upgrade  # lazy: only this command needs it; the CLI starts without loading the app

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"cannot read {args.file}: no such file")

    async def run() -> int:
        await upgrade(settings.database_url)
        db = Database(settings.database_url)
        try:
            progress = terminal_progress if sys.stderr.isatty() else None
            return await import_accounts(db, args.partner, path, progress=progress)
        finally:
            await db.dispose()

    try:
        count = asyncio.run(run())
    except ImportFailed as exc:
        for line in exc.problems:
            print(line)
        more = f" (first {len(exc.problems)} shown)" if exc.total > len(exc.problems) else ""
        print(f"uidhub: {exc.total} invalid row(s){more}; nothing was linked", file=sys.stderr)
        return 1
    except LookupError as exc:
        raise CliError(str(exc).strip("'\"")) from None
    except UnicodeDecodeError:
        raise CliError(f"{args.file} is not UTF-8") from None
    print(f"linked {count} account(s)")
    return 0


def _check_sqlite_path(settings: Settings) -> None:
    """A SQLite file in a missing directory fails inside aiosqlite's worker thread, which prints a traceback."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        directory = Path(url.database).expanduser().resolve().parent
        if not directory.is_dir():
            raise CliError(f"cannot open the SQLite database {url.database}: directory {directory} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # One-shot commands keep stderr for their one-line failure; the server logs its requests.
    if args.command == "serve":
        logs.configure(logs.format_from_env(), "INFO")
    else:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
        if args.command != "export-schema":
            _check_sqlite_path(settings)
        if args.command == "serve":
            _serve(settings, args)
            return 0
        if args.command == "import-accounts":
            return _import_accounts(settings, args)
        if args.command == "export-schema":
            # lazy: only this command needs it; the CLI starts without loading the app
            from uidhub.schema import build_schema

            sdl = build_schema().as_str() + "\n"
            if args.output:
                with open(args.output, "w", encoding="utf-8") as handle:
                    handle.write(sdl)
            else:
                sys.stdout.write(sdl)
            return 0
        print(asyncio.run(_run_db_command(settings, args)))
        return 0
    except CliError as exc:
        print(f"uidhub: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"uidhub: setting {first['loc'][0] if first['loc'] else ''}: {first['msg']}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"uidhub: database error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
