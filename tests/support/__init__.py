"""Shared test helpers that are not fixtures.

Fixtures live in tests/conftest.py and import from here; nothing here imports
from tests.conftest. Modules: `db` (databases, markers, statement counting),
`api` (the in-process GraphQL client and factories), `net` (ports), `accounts`
(the one `link()` and the account mutations), and one module per feature area.
"""
