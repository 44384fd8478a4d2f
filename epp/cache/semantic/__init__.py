"""The semantic tier: an offline embedding model, per-partition vector indexes, guards against false hits."""
