"""Index names that cannot collide (issue 17 item 3): refused when the config loads, naming both
tables with their lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdcstream.core.config import ConfigError, load_config
from cdcstream.core.route import Router


def connector(name: str, *tables: str, database: str = "d") -> str:
    out = (f"  - name: {name}\n"
           f"    connection: {{kind: postgres, host: h, database: {database}, user: u, password: env:X}}\n"
           f"    tables:\n")
    for t in tables:
        out += f"      - {t}\n"
    return out


def load(tmp_path: Path, *connectors: str) -> Path:
    p = tmp_path / "cdcstream.yaml"
    p.write_text("connectors:\n" + "".join(connectors))
    return p


def test_two_derived_names_that_meet_are_refused_with_both_tables_and_lines(tmp_path: Path) -> None:
    p = load(tmp_path, connector("shop-eu", "name: public.x"),
             connector("shop", "name: public.y", "name: eu_public.x", database="d2"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:10: connectors[1] (shop).tables[1] (eu_public.x): ")
    assert "'shop-eu-public-x'" in msg and "shop-eu/public.x" in msg and "shop/eu_public.x" in msg
    assert "connectors[0] (shop-eu).tables[0] (public.x), line 5" in msg


def test_a_repeated_explicit_index_is_refused(tmp_path: Path) -> None:
    p = load(tmp_path, connector("a", "{name: public.orders, index: orders}"),
             connector("b", "{name: public.orders2, index: orders}"))
    with pytest.raises(ConfigError, match=r":9: connectors\[1\] \(b\)\.tables\[0\] \(public.orders2\): .*'orders'.*"
                                          r"a/public.orders.*b/public.orders2.*line 5"):
        load_config(p)


def test_an_explicit_index_equal_to_a_derived_one_is_refused(tmp_path: Path) -> None:
    p = load(tmp_path, connector("a", "name: public.orders", "{name: public.other, index: a-public-orders}"))
    with pytest.raises(ConfigError, match="'a-public-orders'.*a/public.orders.*a/public.other"):
        load_config(p)


def test_names_differing_only_in_case_or_underscores_are_refused(tmp_path: Path) -> None:
    p = load(tmp_path, connector("a", "name: public.Orders", "name: public.orders"))
    with pytest.raises(ConfigError, match="'a-public-orders'"):
        load_config(p)
    p = load(tmp_path, connector("a", "name: public.big_orders", "name: public.big$orders"))
    load_config(p)  # '$' stays: a-public-big$orders is another name


def test_an_index_equal_to_another_tables_chunks_index_is_refused(tmp_path: Path) -> None:
    # Any table gets <alias>-chunks when it runs the full profile (profiles switch at runtime).
    p = load(tmp_path, connector("a", "name: public.x", "name: public.x_chunks"))
    with pytest.raises(ConfigError, match="'a-public-x-chunks' is both the chunks index of table a/public.x and "
                                          "the index of table a/public.x_chunks"):
        load_config(p)


def test_distinct_names_load_and_route_as_before(tmp_path: Path) -> None:
    p = load(tmp_path, connector("shop-eu", "name: public.x", "{name: public.y, index: custom}"),
             connector("shop", "name: public.x", database="d2"))
    router = Router(load_config(p))
    assert sorted(r.alias for r in router.by_key.values()) == ["custom", "shop-eu-public-x", "shop-public-x"]
