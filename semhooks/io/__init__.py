"""The io wing: provenance, atomic artifact files, and the content fingerprints of cache keys."""
