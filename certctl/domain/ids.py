"""Identifier generation in the reference's `<prefix>-<unixnano>-<n>` shape."""

from __future__ import annotations

import itertools
import re
import time

_counter = itertools.count(1)
_SLUG_RE = re.compile(r"[^a-z0-9]+")


def new_id(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}-{next(_counter)}"


def slugify(text: str) -> str:
    return _SLUG_RE.sub("-", text.lower()).strip("-") or "x"
