"""The HTML status page, rendered server-side from the status model.

No JavaScript library, no CDN, no external asset: inline CSS, an inline SVG chart drawn
here, and a ``<meta http-equiv="refresh">`` for auto-refresh (works with JavaScript off).
Every value from outside (names, errors, states) goes through ``html.escape``.
"""

from __future__ import annotations

import html
import re
import time
from typing import Any
from urllib.parse import quote, urlencode

REFRESH_S = 5

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#1d2330;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0001}
th,td{padding:.35em .6em;border-bottom:1px solid #e3e6ea;text-align:right;white-space:nowrap}
th{background:#f0f2f5;font-weight:600}td.l,th.l{text-align:left}
.ok{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#a15c00;font-weight:600}
.muted{color:#6b7280}.err{color:#b3261e;white-space:normal;max-width:40em;text-align:left;font-size:.9em}
.bar{display:inline-block;width:70px;height:8px;background:#e3e6ea;vertical-align:middle;margin-right:.3em}
.bar i{display:block;height:8px;background:#3b82f6}
svg text{font:11px system-ui,sans-serif;fill:#4b5563}
mark{background:#ffd54f;color:inherit;padding:0 1px}
form.search input[name=q]{width:28em}form.search input[name=filters]{width:22em}
ol.hits{padding-left:1.4em}ol.hits li{margin:.2em 0 1em;max-width:60em}
.hit .snippet{margin:.2em 0}.hit .meta{font-size:.85em}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _n(v: int | float | None) -> str:
    if v is None:
        return '<span class="muted">–</span>'
    if isinstance(v, float):
        return f"{v:,.1f}"
    return f"{v:,}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return '<span class="muted">never</span>'
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _state(state: str) -> str:
    cls = {"RUNNING": "ok", "FAILED": "bad", "UNREACHABLE": "bad", "PAUSED": "warn", "STOPPED": "warn",
           "NOT_CREATED": "warn", "UNASSIGNED": "warn", "RESTARTING": "warn"}.get(state, "muted")
    return f'<span class="{cls}">{_e(state)}</span>'


def chart_svg(series: list[dict[str, Any]], width: int = 720, height: int = 180) -> str:
    """Events/s (blue, left axis) and consumer lag (orange, right axis) as one inline SVG."""
    pad_l, pad_r, pad_t, pad_b = 48, 56, 14, 26
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    pts = [s for s in series if s.get("events_per_s") is not None or s.get("lag") is not None]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="throughput and lag">',
             f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fff" stroke="#d1d5db"/>']
    if len(pts) < 2:
        parts.append(f'<text x="{pad_l + 10}" y="{pad_t + h / 2}">collecting samples…</text></svg>')
        return "".join(parts)
    t0, t1 = pts[0]["ts"], pts[-1]["ts"]
    span = max(t1 - t0, 1e-6)
    max_rate = max([s["events_per_s"] or 0.0 for s in pts] + [1.0])
    max_lag = max([s["lag"] or 0 for s in pts] + [1])

    def x(ts: float) -> float:
        return float(pad_l + (ts - t0) / span * w)

    def line(key: str, top: float, color: str) -> str:
        coords = [f"{x(s['ts']):.1f},{pad_t + h - (float(s[key]) / top) * h:.1f}" for s in pts if s[key] is not None]
        if len(coords) < 2:
            return ""
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(coords)}"/>'

    for frac in (0.5, 1.0):
        y = pad_t + h - frac * h
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f3"/>')
        parts.append(f'<text x="{pad_l - 4}" y="{y + 4:.1f}" text-anchor="end">{max_rate * frac:,.1f}</text>')
        lag_label = f"{max_lag * frac:,.0f}" if max_lag >= 10 else f"{max_lag * frac:.1f}"
        parts.append(f'<text x="{pad_l + w + 4}" y="{y + 4:.1f}">{lag_label}</text>')
    parts.append(line("events_per_s", max_rate, "#3b82f6"))
    parts.append(line("lag", max_lag, "#f59e0b"))
    parts.append(f'<text x="{pad_l}" y="{height - 8}">−{span / 60:.1f} min</text>')
    parts.append(f'<text x="{pad_l + w}" y="{height - 8}" text-anchor="end">now</text>')
    parts.append(f'<text x="{pad_l + w / 2}" y="{height - 8}" text-anchor="middle">'
                 f'<tspan fill="#3b82f6">■ events/s</tspan>  <tspan fill="#f59e0b">■ consumer lag</tspan></text>')
    parts.append("</svg>")
    return "".join(parts)


def _progress(snap: dict[str, Any]) -> str:
    p = snap.get("progress")
    read = snap.get("rows_read", 0)
    if snap.get("done"):
        # Finished: its row count and duration, not a share of what the table holds now.
        d = snap.get("duration_s")
        took = "" if d is None else f", {d:,.1f} s" if d < 120 else f", {_age(d)}"
        return f'<span class="ok">done</span> <span class="muted">({_n(read)} rows{took})</span>'
    if p is None:
        return f"{_n(read)} read"
    return (f'<span class="bar"><i style="width:{p * 100:.0f}%"></i></span>{p * 100:.0f}% '
            f'<span class="muted">({_n(read)} / ≈{_n(snap.get("source_rows"))})</span>')


def _budget_row(name: str, b: dict[str, Any]) -> str:
    ends = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(b["period_end"]))
    what = _e(b["budget"]) if b["budget"] else f'<span class="muted">all tables: {_e(b["applies"])}</span>'
    warn = f'<span class="warn">{_e(b["warning"])}</span>' if b["warning"] else ""
    return (f'<tr data-budget="{_e(name)}"><td class="l">{_e(name)}</td><td class="l">{what}</td>'
            f'<td>{_n(b["spent"])}</td><td>{_n(b["remaining"])}</td><td>{_n(b["queued_chunks"])}</td>'
            f'<td>{_n(b["queued_tokens"])}</td><td class="l">{_e(ends)}</td><td class="l">{warn}</td></tr>')


def render_status(snap: dict[str, Any]) -> str:
    rows = []
    for t in snap["tables"]:
        ev = t["events"]
        rows.append(
            f'<tr data-table="{_e(t["id"])}"><td class="l">{_e(t["id"])}</td><td class="l">{_e(t["profile"])}</td>'
            f'<td class="l">{_progress(t["snapshot"])}</td>'
            + "".join(f"<td>{_n(ev[op])}</td>" for op in ("c", "u", "d", "r", "t"))
            + f'<td>{_n(t["lag"])}</td><td>{_age(t["last_event_age_s"])}</td>'
              f'<td>{_n(t["documents"])}</td><td>{_n(t["chunks"])}</td><td>{_n(t["embed_tokens"])}</td>'
              f'<td>{_n(t["tokens_saved"])}</td>'
              f'<td class="{"bad" if t["dlq"] else ""}">{_n(t["dlq"])}</td></tr>')
    conns = []
    for c in snap["connectors"]:
        tasks = ", ".join(f'{_e(x["id"])}: {_state(x["state"])}' for x in c["tasks"]) or '<span class="muted">–</span>'
        slot = c.get("slot")
        if isinstance(slot, dict) and "lag_bytes" in slot:
            slot_txt = (f'{_e(slot["slot"])}: {_n(slot["lag_bytes"])} B '
                        f'{"active" if slot["active"] else "<span class=warn>inactive</span>"}')
        elif isinstance(slot, dict):
            slot_txt = f'<span class="bad">{_e(slot.get("error"))}</span>'
        else:
            slot_txt = '<span class="muted">–</span>'
        conns.append(f'<tr data-connector="{_e(c["name"])}"><td class="l">{_e(c["name"])}</td>'
                     f'<td class="l">{_e(c["kind"])}</td><td class="l">{_state(c["state"])}</td>'
                     f'<td class="l">{tasks}</td><td class="l">{slot_txt}</td>'
                     f'<td class="err">{_e(c["error"]) if c["error"] else ""}</td></tr>')
    workers = " · ".join(f'{_e(w)} {"" if v.get("live") else "(stale)"}' for w, v in sorted(snap["workers"].items()))
    blocked = "".join(
        f'<p class="bad" id="blocked">blocked for {_e(b["for_s"])} s waiting for <b>{_e(b["sink"])}</b>: '
        f'{_e(b["reason"])} — {_e(b["error"])} (attempt {_e(b["attempts"])}, next retry in {_e(b["retry_in_s"])} s; '
        f'tables {_e(", ".join(b["tables"]))}; nothing is acked meanwhile: fix the cause, or '
        f'<code>cdcstream dlq skip TABLE</code> if the event is at fault)</p>'
        for b in snap.get("blocked") or [])
    budgets = "".join(_budget_row(name, b) for name, b in [(t["id"], t.get("embed_budget")) for t in snap["tables"]]
                      + [("all tables", snap.get("embed_budget"))] if b)
    budget_html = ("<h2>Embedding budgets</h2><table id=\"budgets\"><tr><th class=\"l\">budget of</th>"
                   "<th class=\"l\">budget</th><th>spent</th><th>remaining</th><th>queued chunks</th>"
                   "<th>queued tokens</th><th class=\"l\">period ends</th><th class=\"l\">warning</th></tr>"
                   f"{budgets}</table>") if budgets else ""
    migrating = "".join(
        f'<p class="warn" id="migration">rebuilding <b>{_e(m["index"])}</b> ({_e(", ".join(m["changed"]))} changed '
        f'type): {_e(m["from"])} → {_e(m["to"])}, {_n(m["copied"])} / {_n(m["total"])} documents copied, '
        f'{_e(m["docs_per_s"])}/s; searches read {_e(m["from"])} until the swap'
        f'{" — last error: " + _e(m["error"]) if m["error"] else ""}</p>'
        for m in snap.get("migrations") or [])
    lag_err = f'<p class="bad">consumer lag unavailable: {_e(snap["lag_error"])}</p>' if snap.get("lag_error") else ""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap["ts"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cdcstream status</title><style>{_CSS}</style></head>
<body>
<h1>cdcstream status</h1>
<p class="muted">served by {_e(snap["worker"])} at {_e(when)} · cluster-wide totals · refreshes every {REFRESH_S} s
· workers: {workers or "none yet"} · <a href="/metrics">metrics</a> · <a href="/api/openapi.json">API</a></p>
{blocked}
{migrating}
<h2>Throughput and lag</h2>
{chart_svg(snap.get("series") or [])}
{lag_err}
<h2>Connectors</h2>
<table id="connectors"><tr><th class="l">connector</th><th class="l">kind</th><th class="l">state</th>
<th class="l">tasks</th><th class="l">replication slot lag</th><th class="l">last error</th></tr>
{"".join(conns) or '<tr><td colspan="6" class="l muted">no connector in the config</td></tr>'}
</table>
<h2>Tables</h2>
<table id="tables"><tr><th class="l">table</th><th class="l">profile</th><th class="l">snapshot</th>
<th>c</th><th>u</th><th>d</th><th>r</th><th>t</th><th>lag</th><th>last event</th><th>documents</th>
<th>chunks</th><th>tokens spent</th><th>tokens saved</th><th>DLQ</th></tr>
{"".join(rows) or '<tr><td colspan="15" class="l muted">no table in the config</td></tr>'}
</table>
{budget_html}
</body></html>
"""


def render_login(error: str = "", next_path: str = "/status") -> str:
    """The login form: POSTs the token in the body (never the URL), answered with an HttpOnly
    cookie and a redirect to ``next_path`` (one of the views' ``LOGIN_TARGETS``)."""
    msg = f'<p class="bad">{_e(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>cdcstream login</title><style>{_CSS}</style></head>
<body>
<h1>cdcstream</h1>
<p class="muted">Paste an API token (role read or admin). The browser keeps a session cookie, not the token.</p>
{msg}
<form method="post" action="/login" autocomplete="off">
<input type="password" name="token" size="48" required autofocus aria-label="API token">
<input type="hidden" name="next" value="{_e(next_path)}">
<button type="submit">log in</button>
</form>
</body></html>
"""


SEARCH_MODES = ("keyword", "semantic", "hybrid")
_MARK = re.compile(r"(</?mark>)")


def safe_snippet(snippet: str | None) -> str:
    """A hit's snippet as HTML in which ``<mark>`` is the only markup, whatever it holds
    (highlights come escaped from Elasticsearch; escaping again would show ``&amp;amp;``)."""
    if not snippet:
        return ""
    return "".join(part if part in ("<mark>", "</mark>") else html.escape(html.unescape(part))
                   for part in _MARK.split(snippet))


def _hit_html(h: dict[str, Any]) -> str:
    table, doc_id = str(h["table"]), str(h["id"])
    href = f"/api/tables/{quote(table, safe='')}/rows/{quote(doc_id, safe='')}"
    src = h.get("source") or {}
    pos = (f'source position <code class="pos">{_e(src.get("position"))}</code> ({_e(src.get("op"))})'
           if src.get("position") else '<span class="muted">no source position</span>')
    fields = " · ".join(f"{_e(k)}={_e(v)}" for k, v in list((h.get("fields") or {}).items())[:6])
    return (f'<li class="hit" data-table="{_e(table)}" data-id="{_e(doc_id)}">'
            f'<a class="row" href="{_e(href)}">{_e(table)} · id {_e(doc_id)}</a> '
            f'<span class="muted">score {float(h.get("score") or 0):.4f} · {_e(", ".join(h.get("ranks") or {}))}'
            f'</span><div class="snippet">{safe_snippet(h.get("snippet"))}</div>'
            f'<div class="meta muted">{pos} · {fields}</div></li>')


def render_search(form: dict[str, str], tables: list[str], result: dict[str, Any] | None,
                  error: str | None = None) -> str:
    """The search page: a GET form (a result page is a link) and the hits of ``result``."""
    mode = form.get("mode") or "keyword"
    modes = "".join(f'<option{" selected" if m == mode else ""}>{m}</option>' for m in SEARCH_MODES)
    chosen = form.get("table", "")
    opts = '<option value="">all tables</option>' + "".join(
        f'<option value="{_e(t)}"{" selected" if t == chosen else ""}>{_e(t)}</option>' for t in tables)
    out = [f'''<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>cdcstream search</title><style>{_CSS}</style></head>
<body>
<h1>cdcstream search</h1>
<p class="muted"><a href="/status">status</a> · <a href="/login?next=/search">log in</a>
· filters: <code>status:paid</code> <code>amount:&gt;=10</code> <code>created:2024-01-01..2024-02-01</code>
(space-separated; see docs/api.md)</p>
<form class="search" method="get" action="/search">
<input name="q" value="{_e(form.get("q", ""))}" placeholder="search text" aria-label="search text" autofocus>
<select name="mode" aria-label="mode">{modes}</select>
<select name="table" aria-label="table">{opts}</select>
<input name="filters" value="{_e(form.get("filters", ""))}" placeholder="column filters" aria-label="column filters">
<button type="submit">search</button>
</form>''']
    if error:
        out.append(f'<p class="bad" id="error">{_e(error)}</p>')
    if result is not None:
        total = result.get("total") or {}
        more = "+" if total.get("relation") == "gte" else ""
        out.append(f'<p id="summary">{_n(total.get("value"))}{more} hits · {_e(result.get("mode"))}'
                   + "".join(f' · <span class="warn">{_e(w)}</span>' for w in result.get("warnings") or []) + "</p>")
        out.append('<ol class="hits">' + "".join(_hit_html(h) for h in result["hits"]) + "</ol>")
        if result.get("next"):
            nxt = {k: v for k, v in form.items() if k != "search_after" and v}
            nxt["search_after"] = result["next"]
            out.append(f'<p><a id="next" href="/search?{_e(urlencode(nxt))}">next page</a></p>')
    out.append("</body></html>\n")
    return "\n".join(out)
