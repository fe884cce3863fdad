"""The io wing: provenance, atomic artifact files, the content fingerprints of cache keys, and
the one JSON conversion they all use (:func:`to_jsonable`)."""

from semhooks.io.jsonable import to_jsonable

__all__ = ["to_jsonable"]
