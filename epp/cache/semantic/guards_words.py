"""The word-level features behind epp.cache.semantic.guards: numbers, dates, antonyms, typos, scope poles,
question words (pure functions over lower-cased words; the lists are in guards_lexicon)."""

from __future__ import annotations

import re

from epp.cache.semantic import guards_lexicon as lex

_AMPM = re.compile(r"\d\s*([ap])\.?m\b")
_FLAT = re.compile(r"[^a-z0-9]+")
_ANAPHORIC = frozenset(("the", "these", "those"))
_NEGATION_PREFIXES = ("un", "non", "in", "im", "il", "ir", "dis", "ab", "de")
_SCOPE_INDEX: dict[str, list[tuple[int, int]]] = {}
for _axis, (_name, _strict, _poles) in enumerate(lex.SCOPE_AXES):
    for _pole, _phrases in enumerate(_poles):
        for _phrase in _phrases:
            _SCOPE_INDEX.setdefault(_phrase, []).append((_axis, _pole))
_SCOPE_INDEX.update((phrase, []) for phrase in lex.NOT_SCOPE)
# First words of multi-word phrases: only these start a phrase lookup.
_SCOPE_STARTS = frozenset(p.split()[0] for p in _SCOPE_INDEX if " " in p)


def numbers_of(
    words: list[str], spans: list[tuple[str, int, int]], claimed: set[int]
) -> tuple[frozenset[str], bool, frozenset[int]]:
    numbers: set[str] = set()
    ordinals: set[int] = set()
    one_word = False
    for i, word in enumerate(words):
        if word[0].isdigit():
            if i in claimed:
                continue
            adjacent = words[i + 1] if i + 1 < len(words) and spans[i + 1][1] == spans[i][2] else ""
            if adjacent in ("st", "nd", "rd", "th") and word.isdigit():
                ordinals.add(int(word))
            else:
                numbers.add(word if "." in word else str(int(word)))
        elif word == "one":
            one_word = True
        elif word == "two" and i and words[i - 1] in _ANAPHORIC:
            continue  # "which of the two", "these two": the two things named before, no count asked
        elif word in lex.NUMBER_WORDS:
            numbers.add(lex.NUMBER_WORDS[word])
        elif word in lex.ORDINAL_WORDS:
            previous = words[i - 1] if i else ""
            if not (word == "second" and previous in ("a", "per", "one", "each", "every", "split")):
                ordinals.add(lex.ORDINAL_WORDS[word])
    return frozenset(numbers), one_word, frozenset(ordinals)


def dates_of(words: list[str], lower: str) -> frozenset[str]:
    out: set[str] = set()
    for i, word in enumerate(words):
        previous = words[i - 1] if i else ""
        following = words[i + 1] if i + 1 < len(words) else ""
        if word in lex.DATE_WORDS:
            out.add(lex.DATE_WORDS[word])
        elif word == "may" and (
            previous in lex.MAY_CONTEXT or following[:1].isdigit() or previous[:1].isdigit()
        ):
            out.add("may")
        elif (
            word in ("fall", "spring")
            and previous in lex.SEASON_CONTEXT
            and following not in ("boot", "framework")
        ):
            out.add("autumn" if word == "fall" else word)
        if word in lex.RELATIVE_DATE and following in lex.RELATIVE_UNITS:
            out.add(f"{word} {following}")
    out.update(f"{m.group(1)}m" for m in _AMPM.finditer(lower))
    return frozenset(out)


def prefixed_antonym(x: frozenset[str], y: frozenset[str]) -> str:
    """A word of x that is a prefixed/suffixed antonym of a word only y has ("unsafe" vs "safe")."""
    for word in x:
        if len(word) < 6 or word in y:
            continue
        for prefix in _NEGATION_PREFIXES:
            stem = word[len(prefix) :]
            # "nontoxic" vs "non-toxic": the other text has the prefix as a word, the same negation
            if word.startswith(prefix) and len(stem) >= 4 and stem in y and stem not in x and prefix not in y:
                return f"{word!r} vs {stem!r}"
        if word.endswith("less"):
            stem = word[:-4]
            for other in (stem, stem + "ful"):
                if len(stem) >= 3 and other in y and other not in x:
                    return f"{word!r} vs {other!r}"
    return ""


def typo_of(name: str, words: frozenset[str]) -> bool:
    """Some word is one edit (Damerau) from `name`, and not both are known names ("Iran"/"Iraq")."""
    if len(name) < 5 or " " in name:
        return False
    known = name in lex.CLASS_OF
    return any(
        abs(len(w) - len(name)) <= 1
        and w[:1] == name[:1]
        and not (known and w in lex.CLASS_OF)
        and one_edit(name, w)
        for w in words
    )


def one_edit(a: str, b: str) -> bool:
    if len(a) > len(b):
        a, b = b, a
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1 :]


def scope_of(words: list[str]) -> tuple[frozenset[int], ...]:
    """The poles named, longest phrase first: "side effects" is no "effects", "in depth" no "in"."""
    poles: list[set[int]] = [set() for _ in lex.SCOPE_AXES]
    i = 0
    while i < len(words):
        for n in (3, 2, 1) if words[i] in _SCOPE_STARTS else (1,):
            hits = _SCOPE_INDEX.get(" ".join(words[i : i + n]))
            if hits is not None:
                for axis, pole in hits:
                    poles[axis].add(pole)
                i += n
                break
        else:
            i += 1
    return tuple(frozenset(p) for p in poles)


def question_of(words: list[str]) -> frozenset[str]:
    out: set[str] = set()
    for i, word in enumerate(words):
        pair = " ".join(words[i : i + 2])
        if pair in lex.QUESTION_PHRASES:
            out.add(lex.QUESTION_PHRASES[pair])
        elif word in lex.QUESTION_PHRASES:
            out.add(lex.QUESTION_PHRASES[word])
        elif word == "how" and i + 1 < len(words) and words[i + 1] in lex.QUESTION_HOW:
            out.add(f"how {words[i + 1]}")
    return frozenset(out)


def non_word(word: str) -> bool:
    """ "nontoxic", "nonstop": the same negator as "non-toxic" (two words)."""
    return word.startswith("non") and len(word) >= 7 and word not in ("nonsense", "nonetheless")


def flat(text: str) -> str:
    return _FLAT.sub(" ", text.lower()).strip()


def dotted_abbrev(token: str) -> bool:
    """e.g, i.e., U.S.: dotted single letters are abbreviations, not identifiers."""
    return all(len(part) <= 1 for part in token.rstrip("()").split("."))
