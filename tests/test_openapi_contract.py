"""Our OpenAPI against the reference contract, and docs/api-differences.md against both.

The doc lists, as "- `METHOD /path`" lines, every reference endpoint we do not serve yet and every
endpoint we serve that the reference lacks. The test fails when the doc and the code disagree in
either direction. To regenerate the two lists from the code as it is:

    .venv/bin/python -m tests.test_openapi_contract
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI

from certctl.api.app import create_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path("/work/shared/spec/reference-openapi.yaml")
DOC = ROOT / "docs" / "api-differences.md"
MISSING_HEADING = "## Reference endpoints not served yet"
EXTRA_HEADING = "## Endpoints only certctl serves"
METHODS = ("get", "post", "put", "patch", "delete")
ENTRY = re.compile(r"^- `(GET|POST|PUT|PATCH|DELETE) (/\S*)`")

Pair = tuple[str, str]


def normalise(path: str) -> str:
    """`/agents/{id}/jobs/{job_id}` and `/agents/{agent_id}/jobs/{id}` are the same route."""
    return re.sub(r"\{[^}]+\}", "{}", path.rstrip("/") or "/")


def pairs(spec: dict[str, Any]) -> dict[Pair, str]:
    """(METHOD, normalised path) → the path as written, for every operation of an OpenAPI document."""
    found: dict[Pair, str] = {}
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                found[(method.upper(), normalise(path))] = path
    return found


@cache
def reference_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    return spec


def our_app() -> FastAPI:
    return create_app(make_settings("sqlite:///:memory:", Path("/nonexistent-certctl-contract")))


def served(app: FastAPI) -> dict[Pair, str]:
    found = pairs(app.openapi())
    # Served but kept out of the schema itself.
    for url in (app.openapi_url, app.docs_url):
        if url:
            found[("GET", normalise(url))] = url
    return found


def doc_section(heading: str, text: str | None = None) -> dict[Pair, str]:
    """The "- `METHOD /path`" entries under one `## ` heading of the doc (through its `### ` sub-groups)."""
    lines = (DOC.read_text() if text is None else text).splitlines()
    assert heading in lines, f"{DOC.name} has no '{heading}' section"
    entries: dict[Pair, str] = {}
    for line in lines[lines.index(heading) + 1:]:
        if line.startswith("## "):
            break
        if m := ENTRY.match(line):
            key = (m[1], normalise(m[2]))
            assert key not in entries, f"{DOC.name} lists {m[1]} {m[2]} twice"
            entries[key] = m[2]
    return entries


def _show(keys: set[Pair], names: dict[Pair, str]) -> str:
    return "\n".join(f"  - `{method} {names[(method, path)]}`" for method, path in sorted(keys, key=lambda k: k[::-1]))


def test_every_reference_endpoint_we_do_not_serve_is_listed() -> None:
    reference = pairs(reference_spec())
    ours = served(our_app())
    missing = set(reference) - set(ours)
    listed = doc_section(MISSING_HEADING)
    unlisted = missing - set(listed)
    stale = set(listed) - missing
    assert not unlisted, f"not served and not listed in {DOC.name}:\n{_show(unlisted, reference)}"
    assert not stale, (
        f"listed as not served in {DOC.name}, but served now (or not in the reference):\n{_show(stale, listed)}"
    )


def test_every_endpoint_beyond_the_reference_is_listed() -> None:
    reference = pairs(reference_spec())
    ours = served(our_app())
    extra = set(ours) - set(reference)
    listed = doc_section(EXTRA_HEADING)
    unlisted = extra - set(listed)
    stale = set(listed) - extra
    assert not unlisted, f"served, not in the reference and not listed in {DOC.name}:\n{_show(unlisted, ours)}"
    assert not stale, f"listed as extra in {DOC.name}, but not served (or in the reference):\n{_show(stale, listed)}"


def test_the_doc_parser_sees_entries_and_stops_at_the_next_section() -> None:
    sample = "\n".join([
        "## Reference endpoints not served yet", "### Some group", "- `GET /a/{id}` — later", "text",
        "- `POST /b`", "## Endpoints only certctl serves", "- `GET /c`",
    ])
    assert doc_section(MISSING_HEADING, sample) == {("GET", "/a/{}"): "/a/{id}", ("POST", "/b"): "/b"}
    assert doc_section(EXTRA_HEADING, sample) == {("GET", "/c"): "/c"}


def test_paths_keep_the_reference_spelling() -> None:
    # Served routes that match a reference route after normalisation must also be spelled like it, so a
    # client generated from the reference (which names path parameters) fits ours; FastAPI's own
    # parameter names may differ only inside the braces.
    reference = pairs(reference_spec())
    ours = served(our_app())
    for key in set(reference) & set(ours):
        assert re.sub(r"\{[^}]+\}", "{}", ours[key]) == re.sub(r"\{[^}]+\}", "{}", reference[key]), key


# --- regeneration -----------------------------------------------------------------------------------------

# Which later issue brings each group of reference endpoints; the first matching rule wins.
GROUPS: list[tuple[str, str]] = [
    (r"^/\.well-known/pki|/admin/crl|/intermediates", "PKI: CRL, OCSP and the CA hierarchy"),
    (r"^/\.well-known/est|^/scep|/admin/est|/admin/scep|/scep-probe", "Enrollment protocols: ACME, SCEP, EST"),
    (r"^/api/v1/agents/\{\}/(work|csr|certificates|jobs)", "Agent work and CSR"),
    (r"discover|^/api/v1/network-scan", "Discovery and network scanning"),
    (r"^/api/v1/health-checks", "Endpoint health checks"),
    (r"^/api/v1/notifications", "Notifications"),
    (r"^/api/v1/digest", "Digest"),
    (r"^/api/v1/metrics", "Metrics (Prometheus)"),
    (r"^/api/v1/jobs/\{\}/verif", "Deployment verification"),
    (r".", "Inventory and lifecycle"),
]


def group_of(path: str) -> str:
    return next(name for pattern, name in GROUPS if re.search(pattern, normalise(path)))


def _notes() -> dict[Pair, str]:
    """The ` — why` text after each entry of the current doc, kept when the lists are regenerated."""
    notes: dict[Pair, str] = {}
    for line in DOC.read_text().splitlines() if DOC.exists() else []:
        if (m := ENTRY.match(line)) and line[m.end():].strip():
            notes[(m[1], normalise(m[2]))] = line[m.end():]
    return notes


def render_lists() -> str:
    reference = pairs(reference_spec())
    ours = served(our_app())
    notes = _notes()
    grouped: dict[str, list[Pair]] = defaultdict(list)
    for key in set(reference) - set(ours):
        grouped[group_of(reference[key])].append(key)
    out = [MISSING_HEADING, ""]
    for _, name in GROUPS:
        if grouped.get(name):
            out += [f"### {name}", ""]
            out += [
                f"- `{m} {reference[(m, p)]}`{notes.get((m, p), '')}"
                for m, p in sorted(grouped[name], key=lambda k: (k[1], k[0]))
            ]
            out.append("")
    out += [EXTRA_HEADING, ""]
    out += [
        f"- `{m} {ours[(m, p)]}`{notes.get((m, p), '')}"
        for m, p in sorted(set(ours) - set(reference), key=lambda k: (k[1], k[0]))
    ]
    return "\n".join(out) + "\n"


def write_lists() -> None:
    """Replace the two generated lists in the doc, keeping everything before and after them."""
    text = DOC.read_text()
    start = text.index(MISSING_HEADING)
    after_extra = text.index("\n## ", text.index(EXTRA_HEADING) + len(EXTRA_HEADING))
    DOC.write_text(text[:start] + render_lists() + text[after_extra:])


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        write_lists()
    else:
        print(render_lists(), end="")
