"""Masking secrets and row values out of free text (exception messages, error reasons) before it
is logged, stored in a DLQ record or shown.

Two kinds of things must not leave the process in clear: secrets (URL passwords,
``password=…``-style values, auth headers, config dicts printed by an exception) and row values
quoted by Elasticsearch's error reasons (a ``mapper_parsing_exception`` quotes the value it
could not parse: a DLQ reason or a log line would otherwise copy a column value to anyone who
can read them). Values are replaced by their type and length, enough to diagnose a mapping
problem without the data.
"""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]+):(?P<pw>[^/\s@]+)@")
#: A secret-looking name, then (after an optional closing quote, as in a printed dict) = or :.
_SECRET_NAME = (r"(?:password|passwd|secret|token|credentials?|jaas\.config"
                r"|(?:api|access|secret|private|signing|encryption|master)[_.-]?key|apikey)")
# Quotes may come escaped (a JSON string inside a message): \" counts as a quote.
_KEY_VALUE = re.compile(rf"(?i)(?P<k>\b[\w.-]*{_SECRET_NAME}[\w.-]*)(?P<kq>\\?['\"]?)(?P<sep>\s*[=:]\s*)"
                        r"(?P<q>\\?['\"]?)(?P<v>[^'\"\s,;}\\]+)")
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic|apikey)\s+[A-Za-z0-9._~+/=-]{8,}")

# --- Elasticsearch error reasons ------------------------------------------------------------
#: An Elasticsearch error text: ``<type>_exception`` or one of its value-quoting phrasings.
_ES_REASON = re.compile(r"(?i)\w+_exception|failed to parse|Preview of field's value|For input string")
#: The document id stays: it is the DLQ record's key anyway, and it is how an operator finds the row.
_ES_DOC_ID = re.compile(r"(?P<pre>document with id )'(?P<id>[^']*)'")
#: Elasticsearch ends a parsing failure with the value itself, quoted but not escaped (and maybe cut).
_ES_PREVIEW = re.compile(r"(?P<pre>Preview of field's value: )(?P<v>.*)$", re.S)
_ES_QUOTED = re.compile(r"'(?P<s>(?:[^'\\]|\\.)*)'|\"(?P<d>(?:[^\"\\]|\\.)*)\"")
#: [value] after phrases that put the value, not a field name, in brackets.
_ES_BRACKETED = re.compile(r"(?i)(?P<pre>(?:date field|value|date|input|token|string)\s*)\[(?P<v>[^\]]*)\]")
_ES_PAREN = re.compile(r"(?i)(?P<pre>\bvalue\s*)\((?P<v>[^)]*)\)")


_DESCRIBED = re.compile(r"<(?:number|date-like|literal|text), \d+ chars>")


def describe(value: str) -> str:
    """What a value was, without the value: ``<number, 5 chars>``, ``<text, 12 chars>``.
    Idempotent: a description stays itself (reasons are masked when written and when shown)."""
    v = value.strip()
    if _DESCRIBED.fullmatch(v):
        return v
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", v):
        kind = "number"
    elif re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]?[\d:.]*Z?([+-]\d{2}:?\d{2})?", v):
        kind = "date-like"
    elif v.lower() in ("true", "false", "null"):
        kind = "literal"
    else:
        kind = "text"
    return f"<{kind}, {len(value)} chars>"


def _unquote(v: str) -> str:
    v = v.rstrip()
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"" else v.lstrip("'\"")


def mask_es_reason(text: str) -> str:
    """``text`` (an Elasticsearch error reason) with every quoted or bracketed value replaced by its
    type and length; field names in brackets (``failed to parse field [amount] of type [float]``),
    types and the document id stay."""
    ids: list[str] = []

    def keep_id(m: re.Match[str]) -> str:
        ids.append(m["id"])
        return f"{m['pre']}\x00{len(ids) - 1}\x00"

    out = _ES_PREVIEW.sub(lambda m: m["pre"] + describe(_unquote(m["v"])), text)
    out = _ES_DOC_ID.sub(keep_id, out)
    out = _ES_QUOTED.sub(lambda m: describe(m["s"] if m["s"] is not None else m["d"]), out)
    out = _ES_BRACKETED.sub(lambda m: f"{m['pre']}[{describe(m['v'])}]", out)
    out = _ES_PAREN.sub(lambda m: f"{m['pre']}({describe(m['v'])})", out)
    return re.sub(r"\x00(\d+)\x00", lambda m: f"'{ids[int(m.group(1))]}'", out)


def mask_text(text: str) -> str:
    """``text`` with URL passwords, ``password=…``-style values (config dicts included), auth
    headers and, in Elasticsearch error reasons, quoted values replaced."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m['k']}{m['kq']}{m['sep']}{m['q']}***", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)} ***", text)
    if _ES_REASON.search(text):
        text = mask_es_reason(text)
    return text
