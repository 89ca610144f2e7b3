"""Property tests that prove they tested something: each branch a property can take is counted.

A hypothesis test whose interesting branch never runs passes silently (every example
took the early return). Wrap the property in a plain test, count the branches with
`Branches`, and assert on the counts in the test's own body:

    def test_fast_path_equals_slow_path() -> None:
        ran = Branches()

        @PROPERTY_SETTINGS
        @given(canonical_looking())
        def prop(url: str) -> None:
            ...
            ran("fast")

        prop()
        assert ran["fast"], ran
"""

from __future__ import annotations

from collections import Counter


class Branches(Counter[str]):
    """How often each named branch of a property ran."""

    def __call__(self, name: str) -> None:
        self[name] += 1
