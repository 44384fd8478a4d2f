"""The LLM response cache: exact match (in-process LRU in front of Redis) and semantic match (embeddings).

docs/cache.md has the design; epp.cache.types the vocabulary every part shares.
"""
