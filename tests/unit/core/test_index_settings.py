"""Index settings per table (issue 17 item 4): the YAML, the defaults, what reaches Elasticsearch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdcstream.core.config import ConfigError, load_config
from cdcstream.core.route import Router
from cdcstream.sinks.elasticsearch import kept_settings

YAML = """\
connectors:
  - name: shop
    connection: {kind: postgres, host: h, database: d, user: u, password: env:X}
    tables:
      - name: public.orders
        index_settings: {shards: 3, replicas: 1, refresh_interval: 30s}
      - name: public.articles
        profile: full
        text_columns: [body]
        index_settings:
          refresh_interval: "-1"
      - name: public.plain
"""


def load(tmp_path: Path, text: str = YAML) -> Router:
    p = tmp_path / "cdcstream.yaml"
    p.write_text(text)
    return Router(load_config(p))


def test_settings_per_table_with_todays_defaults(tmp_path: Path) -> None:
    r = load(tmp_path)
    assert r.index_settings("shop-public-orders") == {"number_of_shards": 3, "number_of_replicas": 1,
                                                      "refresh_interval": "30s"}
    # The chunks index gets the table's settings too.
    assert r.index_settings("shop-public-articles-chunks") == {"number_of_shards": 1, "number_of_replicas": 0,
                                                               "refresh_interval": "-1"}
    assert r.index_settings("shop-public-plain") == {"number_of_shards": 1, "number_of_replicas": 0}
    assert r.index_settings("cdcstream-embedding-cache") is None


@pytest.mark.parametrize(("old", "new", "expect"), [
    ("shards: 3", "shards: 0", r":6: .*tables\[0\] \(public.orders\)\.index_settings\.shards: Input should be "
                               r"greater than or equal to 1"),
    ("refresh_interval: 30s", "refresh_interval: soon", r":6: .*index_settings\.refresh_interval: refresh_interval "
                                                        r"'soon': a number with a unit"),
    ("replicas: 1", "replica: 1", r"index_settings\.replica: Extra inputs are not permitted"),
])
def test_bad_settings_name_file_line_and_field(tmp_path: Path, old: str, new: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect):
        load(tmp_path, YAML.replace(old, new))


def test_a_swap_keeps_the_tables_settings() -> None:
    answer: dict[str, Any] = {"index": {"number_of_shards": "3", "number_of_replicas": "1", "refresh_interval": "30s",
                                        "uuid": "x", "creation_date": "1", "provided_name": "a-000001"}}
    assert kept_settings(answer) == {"number_of_shards": "3", "number_of_replicas": "1", "refresh_interval": "30s"}
    assert kept_settings({"index": {"number_of_shards": "1", "number_of_replicas": "0"}}) == {
        "number_of_shards": "1", "number_of_replicas": "0"}
