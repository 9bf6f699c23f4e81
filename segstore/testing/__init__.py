"""Test support that ships with segstore: the ``LogStore`` conformance suite.

Importing ``segstore.testing.conformance`` needs pytest (a dev dependency); this
package itself imports nothing so that ``import segstore`` never does.
"""

from __future__ import annotations

__all__: list[str] = []
