"""docs/settings.md is generated from the settings model and must not drift from it."""

from __future__ import annotations

from pathlib import Path

from cdcstream.core.settings import Settings, settings_markdown

ROOT = Path(__file__).resolve().parents[3]


def test_settings_reference_is_current() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == settings_markdown(), (
        "regenerate with: cdcstream settings --markdown > docs/settings.md")


def test_every_setting_is_documented() -> None:
    missing = [n for n, f in Settings.model_fields.items() if not f.description]
    assert not missing, f"settings without a description: {missing}"
