"""Block hashes reused across requests that share a prefix, instead of hashed again for every request.

Hashing is the largest single cost of a prefix-aware decision (one xxhash64 call per 64-character block,
about 0.3 µs each in Python). In the traffic prefix routing is for, most of it is repeated work: a
conversation's next turn, another question about the same document and another user behind the same system
prompt all begin with blocks some recent request already hashed. The memo keeps recent requests' hashed
text with its hashes, grouped by their first block; a new prompt is compared with the texts of its group
(string comparisons, done in C, are far cheaper than hashing) and only the blocks after the longest common
run of whole blocks are hashed. The hashes are the same as `block_hashes`'s: a block's hash depends only on
the text up to and including it, the model, the salt and the block size, all of which are in the group's key.

Bounded by the characters it holds; the least recently used group goes first. Not thread-safe: one
scheduler (one event loop) owns it.
"""

from __future__ import annotations

from collections import OrderedDict

from scorers.prefix_index import block_hashes

DEFAULT_MAX_CHARS = 8_000_000  # about 8 MB of ASCII text, plus its hashes (about 5 MB at 64-character blocks)
DEFAULT_PER_GROUP = 4  # texts kept per first block: a shared system prompt's group serves many users

# (model, cache salt, block size, first block's text)
_GroupKey = tuple[str, str | None, int, str]


def common_blocks(a: str, b: str, block_size: int, known: int = 0) -> int:
    """How many leading whole blocks `a` and `b` have in common, given that the first `known` are."""
    most = min(len(a), len(b)) // block_size
    if known >= most:
        return most
    if a.startswith(b[known * block_size : most * block_size], known * block_size):
        return most
    # Binary search over the block count: the first `lo` blocks agree, and block `hi` + 1 does not.
    lo, hi = known, most - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a.startswith(b[lo * block_size : mid * block_size], lo * block_size):
            lo = mid
        else:
            hi = mid - 1
    return lo


class BlockHashMemo:
    """`hashes` returns what `block_hashes` would, reusing recent prompts' hashes of a common prefix."""

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS, per_group: int = DEFAULT_PER_GROUP) -> None:
        if max_chars < 1 or per_group < 1:
            raise ValueError(f"max_chars and per_group must be positive, got {max_chars}, {per_group}")
        self.max_chars = max_chars
        self.per_group = per_group
        # group -> [(hashed text, its hashes)], most recent first
        self._groups: OrderedDict[_GroupKey, list[tuple[str, list[int]]]] = OrderedDict()
        self._chars = 0
        self.hashed_blocks = 0  # blocks hashed, for tests and benchmarks
        self.reused_blocks = 0  # blocks whose hash came from the memo

    @property
    def chars(self) -> int:
        """Characters of text held."""
        return self._chars

    def hashes(
        self, prompt: str, model: str, block_size: int, max_blocks: int, salt: str | None = None
    ) -> list[int]:
        """The chained hashes of the prompt's leading full blocks (see `block_hashes`); a new list."""
        n = min(len(prompt) // block_size, max_blocks)
        if n == 0:
            return []
        text = prompt[: n * block_size]
        key = (model, salt, block_size, prompt[:block_size])
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = []
        else:
            self._groups.move_to_end(key)
        best, best_at = 0, -1
        for at, (old_text, _) in enumerate(group):
            # Only a text agreeing beyond the best so far can do better: one comparison rules the others out.
            known = best + 1
            if best and not text.startswith(old_text[: known * block_size]):
                continue
            common = common_blocks(text, old_text, block_size, known)
            if common > best:
                best, best_at = common, at
                if common == n:
                    break
        if best_at < 0:
            out = block_hashes(text, model, block_size, n, salt)
        else:
            out = block_hashes(text, model, block_size, n, salt, group[best_at][1][:best])
        self.reused_blocks += best
        self.hashed_blocks += n - best
        self._remember(group, text, out, best_at, best)
        return out

    def _remember(
        self, group: list[tuple[str, list[int]]], text: str, hashes: list[int], at: int, common: int
    ) -> None:
        """Put this prompt first in its group; drop a text it extends, or keep the one that extends it."""
        n = len(hashes)
        if at >= 0:
            old_text, old_hashes = group[at]
            if common == n:  # an older text holds all of this one's blocks (and maybe more): keep it
                group.insert(0, group.pop(at))
                return
            if common == len(old_hashes):  # this one extends the older text, which can go
                del group[at]
                self._chars -= len(old_text)
        group.insert(0, (text, list(hashes)))
        self._chars += len(text)
        while len(group) > self.per_group:
            self._chars -= len(group.pop()[0])
        groups = self._groups
        while self._chars > self.max_chars and groups:
            _, oldest = groups.popitem(last=False)
            self._chars -= sum(len(t) for t, _ in oldest)
