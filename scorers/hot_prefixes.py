"""How many recent requests shared a prefix: a decaying count per prefix key, bounded in size.

`prefill-affinity-filter` keys each request by the last block its best match ends at. Requests of new users
behind one system prompt all end their match at that prompt's last block, so its count grows with every new
user; a returning user's match ends deep in their own history, a block only their own requests reach. A
high count thus marks a prefix shared by many (worth copying to an idle pod) rather than one conversation's.
"""

from __future__ import annotations

import math
from collections import OrderedDict

DEFAULT_HALF_LIFE_S = 30.0
DEFAULT_CAPACITY = 4096


class HotPrefixes:
    def __init__(self, half_life_s: float = DEFAULT_HALF_LIFE_S, capacity: int = DEFAULT_CAPACITY) -> None:
        self._decay_per_s = math.log(2.0) / half_life_s
        self._capacity = capacity
        self._counts: OrderedDict[int, tuple[float, float]] = OrderedDict()  # key -> (count, as of time)

    def touch(self, key: int, now: float) -> float:
        """Count one more request for `key` at `now`; returns the decayed count, this one included."""
        found = self._counts.pop(key, None)
        count = 1.0
        if found is not None:
            old, at = found
            count += old * math.exp(-self._decay_per_s * max(0.0, now - at))
        self._counts[key] = (count, now)
        if len(self._counts) > self._capacity:
            self._counts.popitem(last=False)  # the least recently seen
        return count

    def __len__(self) -> int:
        return len(self._counts)
