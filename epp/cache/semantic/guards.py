"""False-hit guards: may a cached answer to `candidate` serve `query`, although the embeddings are close?

Sentence embeddings place "Which foods are safe for dogs?" and "Which foods are not safe for dogs?" at ~0.95
cosine: they encode the topic, not the details that change the answer. The semantic tier therefore asks
`compatible(query, candidate)` of its best match before serving it. Each text is reduced once to cheap
lexical features (regexes and set lookups, tens of microseconds, no model); the two feature sets must agree:

- number      the multiset of numbers, versions and number words ("3.11" vs "3.12", "five" == "5",
              "300,000" == "300000") and ordinals ("2nd" == "second", "first quarter" vs "third quarter");
- date        months, weekdays, today/tomorrow/tonight, parts of the day, am/pm, seasons, weekend/weekday,
              "this/next/last <week|month|...>"; years are numbers;
- negation    the count of negators (not, no, never, n't, without, except, non-, ...), and antonyms made by
              a prefix or suffix of a word the other text has ("safe"/"unsafe", "mutable"/"immutable",
              "harmful"/"harmless");
- quoted      every quoted or `backticked` span of one text occurs in the other;
- identifier  code identifiers (os.path.join, useEffect, snake_case, f(), --flags) occur in the other;
- entity      every entity of one text occurs in the other: capitalised words not starting a sentence,
              acronyms, and names from epp.cache.semantic.guards_lexicon in any case (countries, cities,
              languages, technologies, companies, currencies, units, animals, foods, elements, planets;
              code keywords and data types only in a text about code), through aliases ("JS" ==
              "JavaScript", "$" == "USD", plurals); a one-edit typo of a name ("Pyhton") still matches
              unless both spellings are names ("Iran"/"Iraq");
- entity_order two entities of one class in the opposite order with only a few words and no symmetric
              connector (and, or, vs, between, with) between them: "USD to EUR" / "EUR to USD",
              "is Python faster than Java" / "... Java faster than Python", "did Rome conquer Carthage";
- scope       antonym axes (pros/cons, beginner/expert, short/detailed, min/max, first/last, more/less,
              buy/sell, upload/download, before/after, men/women, ...) and task words (summarize /
              translate / explain / ...): the texts must not name different poles of an axis;
- action      both texts name actions and one names a verb with no synonym in the other ("merge" vs
              "rename a branch", "store cooked rice" vs "cook rice"): epp.cache.semantic.actions;
- question    the interrogatives that fix what is asked (when/where/who/why, how many/much/long/old/...)
              must not differ when both texts have one.

Paraphrases keep these features (reordering, synonyms of ordinary words, casing, punctuation, filler words,
"please" and typos of ordinary words all leave them unchanged), so a guard costs few true hits; a missing
feature on one side only (scope, question) is tolerated because paraphrases often drop or add such a word.
A guard is a veto only: it never turns a low similarity into a hit. `check` names the first guard that
rejects (one of REASONS: a metric label), `explain` adds the detail for debugging.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass

from epp.cache.semantic import actions as act
from epp.cache.semantic import guards_lexicon as lex
from epp.cache.semantic import guards_words as gw

REASONS = (
    "number",
    "date",
    "negation",
    "quoted",
    "identifier",
    "entity",
    "entity_order",
    "scope",
    "action",
    "question",
)

_ALIASES = {k.rstrip("."): v for k, v in lex.ALIASES.items()}
_QUOTE_CHARS = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "´": "'", "`": "`"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_WORD = re.compile(r"[a-z]+(?:'t\b)?|\d+(?:\.\d+)*|[$€£¥%]|°[cf]")
_COMPOUND = re.compile(
    r"[a-z0-9][a-z0-9]*(?:[.+#/-][a-z0-9]+)+[+#]*|[a-z]+[+#]+|[a-z]+\d[a-z0-9]*|\d+[a-z]+\d*"
)
_CAPWORD = re.compile(r"(?<![\w'])[A-Z][A-Za-z0-9]*(?:[.+#-][A-Za-z0-9]+)*[+#]*")
_QUOTED = re.compile(
    r'"([^"\n]{1,200})"|`([^`\n]{1,200})`|(?<![A-Za-z0-9])\'([^\'\n]{1,200})\'(?![A-Za-z0-9])'
)
_IDENTIFIER = re.compile(
    r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?"  # dotted: os.path.join
    r"|\b[a-z]+[A-Z]\w*"  # camelCase
    r"|\b[A-Za-z]\w*_\w+"  # snake_case
    r"|\b\w+\(\)"  # call()
    r"|(?<![\w-])--?[A-Za-z][\w-]*"  # -rf, --force
)
_LONG_WORD = re.compile(r"[A-Za-z]{4,}")
_LETTER = re.compile(r"[^\W\d_]")
_CAPITAL = re.compile(r"[A-Z]")
_SENTENCE_END = frozenset(".!?:;\n\"'(*•>-[")
_CODE_HINTS = lex.words_of(
    "code function method variable keyword programming script compile compiler cast parse convert type types "
    "class object array syntax"
)
# Directional or comparative words: between two things (animals, foods) only these make the order matter
# ("is salmon healthier than tuna"); "can dogs eat grapes" / "are grapes okay for dogs" ask one thing.
_ORDER_WORDS = frozenset(("than", "to", "into", "from", "instead", "over", "vs", "versus"))
_PHRASE_STARTS = frozenset(p.split()[0] for p in (*lex.CLASS_OF, *_ALIASES) if " " in p)


@dataclass(frozen=True, slots=True)
class Features:
    """What the guards compare of one text (see the module docstring)."""

    numbers: frozenset[str]
    one_word: bool  # "one" written as a word: equals 1, but is usually a pronoun ("which one")
    ordinals: frozenset[int]
    dates: frozenset[str]
    negations: int
    words: frozenset[str]  # every word, lower case, with canonical names and singulars: for membership
    entities: tuple[tuple[str, str, int, int], ...]  # (canonical, class, first word index, end), in order
    gaps: tuple[str, ...]  # the text's words, to look between two entities
    quoted: tuple[str, ...]
    identifiers: tuple[str, ...]
    flat: str  # " lower case words joined by single spaces "
    scope: tuple[frozenset[int], ...]  # per scope axis (guards_lexicon.SCOPE_AXES), the poles named
    question: frozenset[str]
    actions: tuple[frozenset[int], ...]  # per verb named, its epp.cache.semantic.actions groups


def compatible(query: str, candidate: str) -> bool:
    """True when the answer stored for `candidate` may serve `query` (no guard rejects the pair)."""
    return _reject(features(query), features(candidate)) is None


def check(query: str, candidate: str) -> str | None:
    """The first guard (one of REASONS) that rejects the pair, or None."""
    rejection = _reject(features(query), features(candidate))
    return rejection[0] if rejection else None


def explain(query: str, candidate: str) -> str | None:
    """`check` with the detail: "entity: 'java' only in one text"."""
    rejection = _reject(features(query), features(candidate))
    return f"{rejection[0]}: {rejection[1]}" if rejection else None


def check_features(query: Features, candidate: Features) -> str | None:
    """`check` on features computed once (a query checked against several candidates)."""
    rejection = _reject(query, candidate)
    return rejection[0] if rejection else None


def canonical(word: str) -> str:
    """The lexicon's name for `word` (alias, plural), or `word` itself."""
    if word in lex.CLASS_OF:
        return word
    alias = _ALIASES.get(word)
    if alias is not None:
        return alias
    for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)] + repl
            if stem in lex.CLASS_OF:
                return stem
            if stem in _ALIASES:
                return _ALIASES[stem]
    return word


def features(text: str) -> Features:
    """Reduce `text` to what the guards compare."""
    prepared = _THOUSANDS.sub("", text.translate(_QUOTE_CHARS))
    lower = prepared.lower()
    spans = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(lower)]
    words = [w for w, _, _ in spans]
    starts = [s for _, s, _ in spans]
    identifiers = tuple(
        m.group().lower() for m in _IDENTIFIER.finditer(prepared) if not gw.dotted_abbrev(m.group())
    )
    code = (
        "`" in prepared or bool(identifiers) or any(w in _CODE_HINTS or w in lex.PROGRAMMING for w in words)
    )

    # "highest on Earth", "what on earth": the world, not the planet (still a name for "life on Mars")
    claimed = {i for i, w in enumerate(words) if w == "earth" and i and words[i - 1] == "on"}
    found: dict[str, tuple[str, int, int]] = {}

    def add(name: str, klass: str, first: int, end: int) -> None:
        if name not in found or found[name][1] > first:
            found[name] = (klass, first, end)
        claimed.update(range(first, end))

    for m in _COMPOUND.finditer(lower):  # node.js, c++, k8s, covid-19: before their parts
        name = canonical(m.group().rstrip("."))
        if name in lex.CLASS_OF:
            first = bisect_left(starts, m.start())
            add(name, lex.CLASS_OF[name], first, max(first + 1, bisect_left(starts, m.end())))
    for n in (3, 2):  # new york, united states
        for i in range(len(words) - n + 1):
            if words[i] in _PHRASE_STARTS:
                phrase = " ".join(words[i : i + n])
                name = _ALIASES.get(phrase, phrase)
                if name in lex.CLASS_OF and not claimed.intersection(range(i, i + n)):
                    add(name, lex.CLASS_OF[name], i, i + n)
    canon = {w: canonical(w) for w in set(words)}
    for i, word in enumerate(words):
        if i not in claimed and word.isalpha():
            name = canon[word]
            klass = lex.CLASS_OF.get(name)
            if klass is not None and (klass != "code" or code):
                add(name, klass, i, i + 1)
    for word, first in _capitalised(prepared, starts):
        if first not in claimed:
            name = lex.CASED_ALIASES.get(word) or canonical(word.lower())
            add(name, lex.CLASS_OF.get(name, "name"), first, first + 1)

    numbers, one_word, ordinals = gw.numbers_of(words, spans, claimed)
    vocabulary = set(words) | set(canon.values()) | set(found)
    entities = tuple(sorted(((n, k, f, e) for n, (k, f, e) in found.items()), key=lambda t: t[2]))
    return Features(
        numbers=numbers,
        one_word=one_word,
        ordinals=ordinals,
        dates=gw.dates_of(words, lower),
        negations=sum(1 for w in words if w in lex.NEGATORS or w.endswith("n't") or gw.non_word(w)),
        words=frozenset(vocabulary),
        entities=entities,
        gaps=tuple(words),
        quoted=tuple(gw.flat(next(g for g in m.groups() if g)) for m in _QUOTED.finditer(prepared)),
        identifiers=tuple(gw.flat(i) for i in identifiers),
        flat=f" {gw.flat(lower)} ",
        scope=gw.scope_of(words),
        question=gw.question_of(words),
        actions=act.actions(words),
    )


def _reject(a: Features, b: Features) -> tuple[str, str] | None:
    if a.numbers != b.numbers and not _ones_match(a, b):
        return "number", f"{sorted(a.numbers ^ b.numbers)} in one text only"
    if a.ordinals != b.ordinals:
        return "number", f"ordinals {sorted(a.ordinals)} vs {sorted(b.ordinals)}"
    if a.dates != b.dates:
        return "date", f"{sorted(a.dates ^ b.dates)} in one text only"
    if a.negations != b.negations:
        return "negation", f"{a.negations} vs {b.negations} negators"
    for x, y in ((a, b), (b, a)):
        antonym = gw.prefixed_antonym(x.words, y.words)
        if antonym:
            return "negation", antonym
    for x, y in ((a, b), (b, a)):
        for span in x.quoted:
            if f" {span} " not in y.flat:
                return "quoted", f"{span!r} only in one text"
        for ident in x.identifiers:
            if f" {ident} " not in y.flat:
                return "identifier", f"{ident!r} only in one text"
    for x, y in ((a, b), (b, a)):
        for name, _, _, _ in x.entities:
            if name not in y.words and not gw.typo_of(name, y.words):
                return "entity", f"{name!r} only in one text"
    order = _swapped(a, b)
    if order:
        return "entity_order", order
    for axis, (pa, pb) in enumerate(zip(a.scope, b.scope, strict=True)):
        name, strict, _ = lex.SCOPE_AXES[axis]
        if pa != pb and (strict or (pa and pb)):
            return "scope", name
    if act.mismatch(a.actions, b.actions):
        return "action", "different verbs"
    if a.question and b.question and a.question != b.question:
        return "question", f"{sorted(a.question)} vs {sorted(b.question)}"
    return None


def _ones_match(a: Features, b: Features) -> bool:
    """ "one" as a word equals 1 when that is the only difference ("1 cup" == "one cup")."""
    return (a.one_word and a.numbers | {"1"} == b.numbers) or (b.one_word and b.numbers | {"1"} == a.numbers)


def _capitalised(text: str, starts: list[int]) -> list[tuple[str, int]]:
    """Capitalised words that carry information: not sentence-initial, not in an all-caps or Title Case text.

    Acronyms (two or more capitals) count anywhere. Returns (word, index of its first word token)."""
    letters, capitals = len(_LETTER.findall(text)), len(_CAPITAL.findall(text))
    shouting = letters >= 8 and capitals >= 0.6 * letters
    long_words = _LONG_WORD.findall(text)
    title = len(long_words) >= 3 and sum(w[0].isupper() for w in long_words) >= 0.8 * len(long_words)
    if shouting:
        return []
    out = []
    for m in _CAPWORD.finditer(text):
        word = m.group()
        if word.lower() in lex.STOP_CAPS:
            continue
        i = m.start() - 1
        while i >= 0 and text[i] in " \t":
            i -= 1
        initial = i < 0 or text[i] in _SENTENCE_END
        acronym = sum(c.isupper() for c in word) >= 2 and word.upper() == word
        if word in lex.CASED_ALIASES or acronym or not (initial or title):
            out.append((word, bisect_left(starts, m.start())))
    return out


def _swapped(a: Features, b: Features) -> str:
    """Two same-class entities in opposite order, close together, joined by no symmetric word."""
    pos_b = {name: (first, end) for name, _, first, end in b.entities}
    shared = [(n, k, f, e) for n, k, f, e in a.entities if n in pos_b]
    for i, (x, kx, _, ex) in enumerate(shared):
        for y, ky, fy, _ in shared[i + 1 :]:
            if not (kx == ky or (kx in lex.NAME_LIKE and ky in lex.NAME_LIKE)):
                continue
            (bfx, _), (bfy, bey) = pos_b[x], pos_b[y]
            if bfy >= bfx:  # same order in b (x before y in a by construction)
                continue
            gap_a, gap_b = a.gaps[ex:fy], b.gaps[bey:bfx]
            if kx == ky == "thing" and not _ORDER_WORDS.intersection(gap_a + gap_b):
                continue
            if all(0 < len(g) <= 3 and not lex.SYMMETRIC.intersection(g) for g in (gap_a, gap_b)):
                return f"{x!r} and {y!r} swapped"
    return ""
