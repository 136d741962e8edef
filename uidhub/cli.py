"""The `uidhub` command line (OPERATIONS.md).

Bad arguments and an unreachable database end in a one-line message on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from models import Account, Partner
from models.enums import OperationMethod, PartnerKind, Role
from resolvers.auth import create_token
from uidhub.db import Database
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
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--demo", action="store_true", help="load the demo data set first (if the database is empty)")

    sub.add_parser("migrate", help="bring the database to the latest schema")

    partner = sub.add_parser("create-partner", help="create a partner; prints its UID")
    partner.add_argument("--uid", required=True)
    partner.add_argument("--name", required=True)
    partner.add_argument("--kind", required=True, choices=[k.value for k in PartnerKind])
    partner.add_argument("--parent")
    partner.add_argument("--alert-email", action="append", default=[])

    token = sub.add_parser("create-token", help="create an operator token; prints only the token")
    token.add_argument("--partner", required=True)
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--method", default="PLATFORM", choices=["PLATFORM", "API"])
    token.add_argument("--operator-uid")
    token.add_argument("--operator-name")
    token.add_argument("--ram", action="store_true")
    token.add_argument("--account")

    export = sub.add_parser("export-schema", help="print the served GraphQL schema (SDL)")
    export.add_argument("--output", help="write to this file instead of stdout")

    demo = sub.add_parser("demo", help="load the demo data set")
    demo.add_argument("--accounts", type=int, default=300)

    bulk = sub.add_parser("import-accounts", help="link accounts in bulk from a CSV file (all or nothing)")
    bulk.add_argument("--partner", required=True, help="the partner UID the accounts are linked to")
    bulk.add_argument("file", help="UTF-8 CSV: uid,nickname,business_manager,remarks,master_uid,quota_amount,"
                                   "warning_percent")
    return parser


async def _create_partner(db: Database, args: argparse.Namespace) -> str:
    from resolvers.accounts import check_email

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
            Partner(uid=args.uid, name=args.name, kind=PartnerKind(args.kind), parent_id=parent_id,
                    alert_emails=list(args.alert_email))
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
                session, partner=partner, role=role, method=OperationMethod(args.method),
                operator_uid=args.operator_uid, operator_name=args.operator_name, is_ram=args.ram, account=account,
            )
        except ValueError as exc:
            raise CliError(str(exc)) from None


async def _run_db_command(settings: Settings, args: argparse.Namespace) -> str:
    from uidhub.migrate import upgrade

    await upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        if args.command == "create-partner":
            return await _create_partner(db, args)
        if args.command == "create-token":
            return await _create_token(db, args)
        if args.command == "demo":
            from uidhub.demo import load_demo

            result = await load_demo(db, settings, accounts=args.accounts)
            return result.describe(settings)
        return "database is at the latest schema"
    finally:
        await db.dispose()


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from uidhub.migrate import upgrade

    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    if args.workers > 1 and settings.is_sqlite:
        logging.getLogger("uidhub").warning("several workers on SQLite: writes queue on one file lock")
    if args.workers > 1 and not settings.redis_url:
        raise CliError("--workers above 1 needs UIDHUB_REDIS_URL so that every worker delivers every event")
    asyncio.run(upgrade(settings.database_url))
    if "console_url" not in settings.model_fields_set:
        # Links printed and mailed point at where this server actually listens.
        settings = settings.model_copy(update={"console_url": f"http://{args.host}:{args.port}"})
    if args.demo:
        from uidhub.demo import load_demo

        async def demo() -> str:
            db = Database(settings.database_url)
            try:
                return (await load_demo(db, settings, accounts=300, only_if_empty=True)).describe(settings)
            finally:
                await db.dispose()

        print(asyncio.run(demo()), flush=True)
    print(f"uidhub serving on http://{args.host}:{args.port}/graphql", flush=True)
    uvicorn.run(
        "uidhub.asgi:app", host=args.host, port=args.port, workers=args.workers,
        timeout_graceful_shutdown=10, log_level="info", lifespan="on",
    )


def _import_accounts(settings: Settings, args: argparse.Namespace) -> int:
    """`import-accounts`: 0 and the count when every row is linked; 1 and `line N: CODE message` lines otherwise."""
    from pathlib import Path

    from uidhub.import_accounts import ImportFailed, import_accounts, terminal_progress
    from uidhub.migrate import upgrade

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
    logging.basicConfig(level=logging.INFO if args.command == "serve" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
            from schema import build_schema

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
