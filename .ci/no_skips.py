"""Fail the test run when pytest collected nothing or skipped anything (a skip hides a missing tool)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def main(path: str) -> int:
    root = ET.parse(path).getroot()  # noqa: S314 - our own pytest's report
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    skipped = [
        f"{case.get('classname')}::{case.get('name')}: {skip.get('message', '')}"
        for case in root.iter("testcase")
        for skip in case.findall("skipped")
    ]
    if total == 0:
        print("no tests were collected", file=sys.stderr)
        return 1
    if skipped:
        print(f"{len(skipped)} test(s) skipped; a skip is a failure here:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in skipped), file=sys.stderr)
        return 1
    print(f"{total} tests ran, none skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
