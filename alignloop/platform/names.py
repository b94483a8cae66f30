"""The one rule for user names, for the web form, the API and `alignloop serve --create-admin`.

A name is stored in its NFKC form (so a full-width "ａｄｍｉｎ" is "admin"), has 1 to 64
characters, starts with a letter or a digit and otherwise holds letters, combining marks, digits
and `_ . - @ +`: no spaces, no invisible characters (zero-width spaces and joiners, bidirectional
marks, control characters), no symbols. A new name must also not look like an existing one: two
names are confusable when their skeletons match, where the skeleton folds case and maps each
character to one representative of its class of look-alikes in Unicode's confusables data
(UTS #39, through the `confusable-homoglyphs` package): Cyrillic "аdmin" and "Admin" both look
like "admin", and "admln" looks like "adm1n".
"""

from __future__ import annotations

import functools
import unicodedata

MAX_NAME_LENGTH = 64
NAME_PUNCTUATION = frozenset("_.-@+")
NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} letters, digits and _ . - @ +, starting with a letter or a digit;"
    " no spaces or invisible characters"
)


def _describe(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed character')}"


def normalise_name(raw: str) -> str:
    """`raw` in the form it is stored in (NFKC), or ValueError saying what breaks the rule."""
    name = unicodedata.normalize("NFKC", raw)
    if not name:
        raise ValueError(f"must not be empty ({NAME_RULE})")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{len(name)} characters, more than {MAX_NAME_LENGTH}")
    for position, char in enumerate(name):
        category = unicodedata.category(char)
        allowed = category[0] in "LN" or (position > 0 and (category[0] == "M" or char in NAME_PUNCTUATION))
        if not allowed:
            where = "starts with" if position == 0 else f"has at position {position + 1}"
            raise ValueError(f"{where} {_describe(char)}, which is not allowed ({NAME_RULE})")
    return name


def login_name(raw: str) -> str:
    """What someone typed into a login form, as names are stored: NFKC, surrounding spaces dropped."""
    return unicodedata.normalize("NFKC", raw).strip()


@functools.cache
def _representatives() -> dict[str, str]:
    """Each character that has look-alikes -> the smallest character of its class of look-alikes
    (classes: the connected groups of Unicode's confusables data, single characters only)."""
    from confusable_homoglyphs.confusables import confusables_data

    parent: dict[str, str] = {}

    def root(char: str) -> str:
        parent.setdefault(char, char)
        while parent[char] != char:
            parent[char] = parent[parent[char]]
            char = parent[char]
        return char

    for char, homoglyphs in confusables_data.items():
        for homoglyph in homoglyphs:
            other = homoglyph["c"].replace("\u200e", "")  # the data wraps right-to-left ones in marks
            if len(char) == 1 and len(other) == 1:
                a, b = sorted((root(char), root(other)))
                parent[b] = a  # the smaller root wins, so a class's root is its smallest member
    return {char: root(char) for char in parent}


def skeleton(name: str) -> str:
    """What `name` looks like, whatever its case: equal skeletons mean names people cannot tell
    apart (UTS #39's skeleton, with case folded first)."""
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", name).casefold())
    table = _representatives()
    return "".join(table.get(char, char) for char in folded)


def confusable_with(name: str, existing: list[str]) -> str | None:
    """The first of `existing` that `name` looks like, or None."""
    mine = skeleton(name)
    return next((other for other in existing if skeleton(other) == mine), None)
