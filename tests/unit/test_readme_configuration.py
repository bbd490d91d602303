"""The README's Configuration table names every setting, with the default the code has."""

from __future__ import annotations

import re
from pathlib import Path

from inferd.core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def configuration_rows() -> dict[str, str]:
    """Setting name → the table's default column, for each name a row starts with."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for names, default in re.findall(r"^\| ((?:`[a-z_]+`(?:, )?)+) \| ([^|]*) \|", section, flags=re.M):
        for name in re.findall(r"`([a-z_]+)`", names):
            rows[name] = default
    return rows


def test_every_setting_is_in_the_configuration_table() -> None:
    rows = configuration_rows()
    assert set(Settings.model_fields) - set(rows) == set()
    assert set(rows) - set(Settings.model_fields) == set()


def test_plain_defaults_in_the_table_are_the_code_defaults() -> None:
    for name, default in configuration_rows().items():
        shown = re.fullmatch(r"`([^`]*)`", default.strip())
        value = Settings.model_fields[name].default
        if shown is None or not isinstance(value, int | float | str) or name == "job_ttl":
            continue  # prose ("off, N"), several values, or a duration shown in its unit
        text = shown.group(1)
        expected = str(value).lower() if isinstance(value, bool) else str(value)
        assert text in (expected, expected.removesuffix(".0")), (name, text, value)
