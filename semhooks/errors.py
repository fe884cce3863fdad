"""The warnings semhooks raises, so that callers (and its own tests) can act on them by class.

- :class:`FallbackWarning`: a documented fast path was not taken (the result is right, but
  slower than documented): for example the KV prefix cache of LRE fitting was declined.
- :class:`NumericalWarning`: a numerical result needs care (a saturated estimate, NaN cells,
  a fallback solver).

Both derive from :class:`SemhooksWarning` (a ``UserWarning``). semhooks' test suite turns
every ``SemhooksWarning`` into an error unless the test expects it (``pytest.warns``).
"""

from __future__ import annotations

__all__ = ["FallbackWarning", "NumericalWarning", "SemhooksWarning"]


class SemhooksWarning(UserWarning):
    """Base class of every warning semhooks raises."""


class FallbackWarning(SemhooksWarning):
    """A documented fast path was not taken; the result is right but slower."""


class NumericalWarning(SemhooksWarning, RuntimeWarning):
    """A numerical result that needs care (saturated, non-finite, a fallback solver)."""
