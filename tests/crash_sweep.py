"""Running many crash cases and failing once with every distinct failure."""

from __future__ import annotations

import re
from collections.abc import Callable

from segstore.errors import SegstoreError

_CASE_DIR = re.compile(r"/\S*/(p|k|s)\d+/")


def sweep(cases: list[tuple[str, Callable[[], object]]]) -> None:
    """Run every case; fail with all distinct failures (not just the first).

    Failures are grouped by their first line, with each case's own directory replaced
    by ``<store>/`` so that the same failure in many cases shows once.
    """
    failures: dict[str, list[str]] = {}
    for name, case in cases:
        try:
            case()
        except (AssertionError, SegstoreError) as exc:
            lines = str(exc).splitlines() or [repr(exc)]
            first = _CASE_DIR.sub("<store>/", lines[0])
            message = f"{type(exc).__name__}: {first[:240]}"
            failures.setdefault(message, []).append(name)
    assert not failures, "\n".join(
        f"{len(names)} case(s), e.g. {names[:3]}: {message}" for message, names in failures.items()
    )
