"""Alert emails rendered outside the app use the documented defaults, never the process environment."""

from __future__ import annotations

import pytest

from uidhub.resolvers import crossing


def test_rendering_defaults_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UIDHUB_DISPLAY_TIMEZONE", "+01:00")
    monkeypatch.setenv("UIDHUB_CONSOLE_URL", "https://elsewhere.example")
    crossing._default_settings.cache_clear()
    try:
        defaults = crossing._default_settings()
        assert (defaults.display_timezone, defaults.console_url) == ("+08:00", "http://127.0.0.1:8000")
    finally:
        crossing._default_settings.cache_clear()
