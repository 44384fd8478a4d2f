"""The action guard: two texts on one topic that ask for different actions ask different things.

"How do I merge a git branch?" and "How do I rename a git branch?" sit at ~0.8 cosine and share every
entity, number and scope word; only the verb differs. Each line of ACTIONS is a group of verbs that ask for
the same thing (synonyms a paraphrase may swap: "undo" / "revert", "set up" / "create" / "install"), and a
verb may be in several groups. A text's actions are the groups of the verbs it names, in any inflection
("cooked", "stores", "storing"). The guard rejects a pair when one text names a verb that shares no group
with any verb of the other, *and* the other names an action too: "store cooked rice" vs "cook rice", "merge"
vs "rename". A text without any listed verb ("What's the formula for compound interest?" / "How do I
calculate compound interest?") constrains nothing, as paraphrases often turn a verb into a noun.

Generic verbs (do, make, get, use, have, need, want, know, help, work) are no actions: "make pasta sauce" is
about the sauce. Verbs that are also common nouns or adjectives with another sense are left out too.
"""

from __future__ import annotations

from epp.cache.semantic.guards_lexicon import words_of

# "_" joins a phrasal verb ("set_up"): matched as two words, before its parts.
ACTIONS = """
    create make_new new generate build set_up setup initialise initialize init start add
    install set_up setup add enable download get_started
    uninstall remove delete erase drop purge clear wipe get_rid
    activate enable turn_on switch_on start launch run open
    deactivate disable turn_off switch_off stop close quit exit kill shut_down
    rename name
    merge combine join
    split divide separate
    copy duplicate clone
    move relocate transfer
    undo revert rollback roll_back reverse cancel reset
    reset restore factory_reset wipe
    back_up backup save export
    import load read open
    update upgrade refresh
    downgrade
    fix repair solve resolve debug troubleshoot correct
    change modify edit alter replace swap switch adjust convert
    convert parse cast turn transform change
    compare contrast differ
    sort order arrange rank
    filter search find look_up locate
    cook boil fry bake roast grill steam prepare make
    store keep preserve freeze refrigerate save
    reheat warm_up microwave
    clean wash
    grow plant cultivate
    harvest pick
    prune trim cut
    water irrigate
    feed
    train teach learn practise practice study pick_up master
    monitor track watch observe measure check
    test check verify validate
    deploy release publish ship
    configure set_up setup customise customize
    encrypt encode
    decrypt decode
    compress zip
    extract unzip decompress
    print display show output
    write compose draft
    translate
    summarize summarise
    calculate compute work_out
    buy purchase order get
    sell
    rent lease
    borrow
    lend
    cancel unsubscribe
    subscribe sign_up register join
    log_in login sign_in
    log_out logout sign_out
    pay
    earn make
    invest
    save
    spend
    treat cure heal
    prevent avoid
    diagnose
    apply
    plant sow
    paint draw
    mount attach
    unmount detach eject
    push upload send
    pull fetch download
    commit
    connect link pair
    disconnect unlink unpair
    block ban
    unblock unban
    lock
    unlock
    share
    hide
    mute silence
    charge
    replace
"""


def _forms(verb: str) -> set[str]:
    """The inflections of a regular English verb (and a few spellings of irregular ones)."""
    out = {verb, verb + "s", verb + "es", verb + "ed", verb + "ing"}
    if verb.endswith("e"):
        out |= {verb + "d", verb[:-1] + "ing"}
    if verb.endswith("y") and len(verb) > 2 and verb[-2] not in "aeiou":
        out |= {verb[:-1] + "ies", verb[:-1] + "ied"}
    if len(verb) >= 3 and verb[-1] in "bdgmnprt" and verb[-2] in "aeiou" and verb[-3] not in "aeiou":
        out |= {verb + verb[-1] + "ed", verb + verb[-1] + "ing"}
    return out


IRREGULAR = {
    "made": "make",
    "built": "build",
    "ran": "run",
    "took": "take",
    "wrote": "write",
    "written": "write",
    "drew": "draw",
    "drawn": "draw",
    "sold": "sell",
    "bought": "buy",
    "paid": "pay",
    "spent": "spend",
    "kept": "keep",
    "froze": "freeze",
    "frozen": "freeze",
    "taught": "teach",
    "lent": "lend",
    "shut": "shut",
    "set": "set",
    "cut": "cut",
    "put": "put",
    "read": "read",
    "fried": "fry",
    "sown": "sow",
    "shown": "show",
    "found": "find",
    "got": "get",
    "gotten": "get",
}


def _index() -> tuple[dict[str, frozenset[int]], dict[str, frozenset[int]]]:
    """(one-word form -> groups, two-word phrase -> groups)."""
    words: dict[str, set[int]] = {}
    phrases: dict[str, set[int]] = {}
    for group, line in enumerate(ACTIONS.strip().splitlines()):
        for verb in line.split():
            if "_" in verb:
                head, _, tail = verb.partition("_")
                for form in _forms(head) | {k for k, v in IRREGULAR.items() if v == head}:
                    phrases.setdefault(f"{form} {tail}", set()).add(group)
            else:
                for form in _forms(verb) | {k for k, v in IRREGULAR.items() if v == verb}:
                    words.setdefault(form, set()).add(group)
    return (
        {k: frozenset(v) for k, v in words.items()},
        {k: frozenset(v) for k, v in phrases.items()},
    )


_WORDS, _PHRASES = _index()
_PHRASE_HEADS = frozenset(p.split()[0] for p in _PHRASES)
# Forms that are more often something else: "name" (noun), "set" (noun), "order" (noun), "run" (a run), ...
_AMBIGUOUS = words_of("""
    name names new order orders run runs open watch water cut set show shows pair pick pay make
    makes made turn turns save start end keep get gets got output display print check plant plants
    link links lock block share charge join learn study store stores zip paint draw drop clear clears
    record""")


def actions(words: list[str] | tuple[str, ...]) -> tuple[frozenset[int], ...]:
    """The action groups of each verb `words` names (one entry per verb, in order)."""
    out: list[frozenset[int]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in _PHRASE_HEADS and i + 1 < len(words):
            groups = _PHRASES.get(f"{word} {words[i + 1]}")
            if groups is not None:
                out.append(groups)
                i += 2
                continue
        groups = _WORDS.get(word)
        if groups is not None and _verb_here(words, i):
            out.append(groups)
        i += 1
    return tuple(out)


_SUBJECTS = words_of("i you we to please")
_DETERMINERS = words_of("the a an my your this that its their our his her these those")


def _verb_here(words: list[str] | tuple[str, ...], i: int) -> bool:
    """Whether the form at `i` is used as a verb, as far as its neighbours tell.

    An ambiguous form counts only right after "I", "you", "we", "to", "please"; a participle after a
    determiner is an adjective ("the boiling point", "the fixed code"); "show me" / "give me" ask nothing
    more than "what is"."""
    word, previous = words[i], words[i - 1] if i else ""
    if i + 1 < len(words) and words[i + 1] in ("me", "us"):
        return False
    if word.endswith(("ed", "ing")) and previous in _DETERMINERS:
        return False
    return word not in _AMBIGUOUS or previous in _SUBJECTS


def mismatch(a: tuple[frozenset[int], ...], b: tuple[frozenset[int], ...]) -> bool:
    """Both texts name actions, and one names a verb sharing no group with any verb of the other."""
    if not a or not b:
        return False
    in_a, in_b = frozenset().union(*a), frozenset().union(*b)
    return any(not groups & in_b for groups in a) or any(not groups & in_a for groups in b)
