"""Content keywords of an edit task: what the edited prompt must keep, add, and must no longer say.

DiffChat's content-integrity reward needs the key words of the source prompt and the instruction. They are
read here with a few transparent rules rather than a model, so a failing reward can be traced to one rule.

Normalisation (applied the same way to sources, instructions and edited prompts):
    lower case; curly quotes straightened; possessives dropped ("dog's", "dogs'" -> "dog", "dogs");
    hyphens, slashes and other punctuation split words ("pixel-art" -> "pixel art"); British spellings of a
    few image words mapped to American ones (`SPELLING`); every word lemmatised with `simplemma`, repeated
    until it stops changing so "paintings" -> "painting" -> "paint" and "painting" -> "paint" agree, with
    a few documented fixes where simplemma picks the wrong reading (`LEMMA_OVERRIDES`: "skies" -> "sky").

Content words are the words left after dropping English stop words (the `stop-words` package) except
`STOP_KEEP`, the words that list counts as stop words but that carry content in an image prompt (count
words "two".."twelve" and digits, sizes such as "big"/"small", places such as "top"/"front", nouns such
as "man"/"fire"/"room"). Articles "a"/"an" and "one" stay stop words: a count of one need not be kept.
On the instruction side the edit verbs (`INSTRUCTION_WORDS`: "change", "replace", "add", "remove",
"make", ...) and the attribute-slot names (`SLOT_WORDS`: "color", "background", "style", ...) are
dropped as well: they say how to edit, not what the picture shows.

The instruction is split into clauses (at ".", "!", "?", and at ",", ";", "and", "then" when the next
words start a new edit, except inside "instead of X, Y"); each clause is read by the first rule that
matches:

1. removal: "remove/delete/erase/eliminate/get rid of/take away X", "take X away", "don't show X",
   "without X", "no X" -> content(X) forbidden. X stops at a preposition ("remove the hat from the
   dog" forbids only "hat"); words before "without"/"no" are read as a clause of their own.
2. replacement: "Y instead of X", "instead of X, Y", "... from X to Y", "replace/swap/substitute/
   exchange X with/for/by Y", "change/turn/transform/convert/switch/make X (in)to Y"
   -> content(X) - content(Y) forbidden, content(Y) required. Three refinements:
   * X names an attribute slot ("the color of the dogs", "the background", "the number of dogs",
     "the time of day", "the style", "the weather", "the setting"): the slot word and the object
     ("dogs") are not forbidden (the object stays required); only X's words of the slot's category are
     (they are explicit old values: "change the red color to blue").
   * Y is only attribute values ("change the dogs to blue"): X is the object being recoloured, so only
     X's words of Y's categories are forbidden.
   * "substitute X for Y" is ambiguous in English usage; when exactly one side occurs in the source that
     side is the old one, otherwise X is taken as the old one like "replace X with Y".
3. relocation / placement: "move/put/place/set X to/in/on/at/... Y". If X is already in the source
   (or is "it"), the scene moves: content(Y) required and the source's location phrase is superseded.
   Otherwise something new is placed: content(X) and content(Y) required ("put a hat on the dog").
4. attribute change: "make X", "turn X <value>", "render/paint/color X": content(X) required; when X
   ends in a value and an earlier word of the same category modifies a noun ("make the red dogs blue")
   that earlier word is the old value and is forbidden.
5. addition: "add/include/insert/give/show/there should be X": content(X) required.
6. anything else: content words required.

Category supersession. An edit that sets an attribute value replaces the source's old value of the same
category, so the source's words of that category are dropped from `required` (neither required nor
forbidden: the policy may keep or drop them) unless the instruction names them as the old value, which
makes them forbidden. Categories (`CATEGORY_LEXICONS`): colour, count (two.., digits), time/weather/season
(one category: "make it rainy" may replace "at sunset"), style/medium. A word's category is read in
context: multi-word values (`CATEGORY_PHRASES`: "stained glass", "golden hour") and head nouns after a
value (`CATEGORY_HEADS`: "woodcut print", "foggy weather") take the value's category.
Supersession is triggered by rules 2 and 4 for the categories of the new value's words and of the slot
X names; by rules 5 and 6 when every content word is an attribute value or a slot is named ("show it at
night", "watercolor style"), or when a value modifies a noun already in the source ("there should be four
elephants" re-counts the elephants); and by an article before a counted source noun ("make it a dog" when
the source says "two dogs"). Otherwise additions never supersede: "add a red balloon" does not recolour
the dog. A background/setting/scene slot or a relocation supersedes the source's last location phrase:
the words after its last in/on/at/by/under/near/beside/... up to a comma, the next preposition, "with",
"and" or an "-ing" word, skipping phrases that only name time, weather or style ("at sunset", "in foggy
weather"); words of that phrase that also occur elsewhere in the source stay required.

Finally required = (content(source) - forbidden - superseded) | new, and forbidden = forbidden - required:
a word the instruction asks for is never forbidden. An empty (or stop-word-only) source or instruction
contributes nothing, so two empty strings give two empty sets; rejecting empty rows is the loader's job.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from importlib import resources

import simplemma
import yaml
from stop_words import get_stop_words

# ----------------------------------------------------------------------------------------------- lexicons


LEXICON_FILE = "keyword_lexicons.yaml"  # in promptgym/rewards/data/, with a comment on every list


def _read_lexicons() -> dict:
    text = (resources.files("promptgym.rewards") / "data" / LEXICON_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _wordlist(lines: list[str]) -> frozenset[str]:
    """A frozenset from a lexicon's lines of space-separated words."""
    return frozenset(word for line in lines for word in line.split())


_LEXICONS = _read_lexicons()
STOP_KEEP: frozenset[str] = _wordlist(_LEXICONS["stop_keep"])
STOP_WORDS: frozenset[str] = frozenset(get_stop_words("en")) - STOP_KEEP
INSTRUCTION_WORDS: frozenset[str] = _wordlist(_LEXICONS["instruction_words"])
SLOT_WORDS: dict[str, str | None] = dict(_LEXICONS["slot_words"])
_SLOT_PHRASES: tuple[tuple[str, str], ...] = tuple((pattern, slot) for pattern, slot in _LEXICONS["slot_phrases"])
SPELLING: dict[str, str] = dict(_LEXICONS["spelling"])
LEMMA_OVERRIDES: dict[str, str] = dict(_LEXICONS["lemma_overrides"])
_LOCATION_PREPS = _wordlist(_LEXICONS["location_preps"])
_PHRASE_BREAKS = _LOCATION_PREPS | _wordlist(_LEXICONS["phrase_breaks"])
_ARTICLES = _wordlist(_LEXICONS["articles"])
_PRONOUNS = _wordlist(_LEXICONS["pronouns"])


# --------------------------------------------------------------------------------------- normalisation


@functools.lru_cache(maxsize=65536)
def lemma(word: str) -> str:
    """Lemma of one word (cached: prompts repeat words), stable under repeated lemmatising ("Greys" -> "gray")."""
    word = word.lower()
    word = SPELLING.get(word, word)
    if word in LEMMA_OVERRIDES:
        return LEMMA_OVERRIDES[word]
    if word.isdigit():
        return word
    for _ in range(3):
        nxt = simplemma.lemmatize(word, lang="en").lower()
        if nxt == word:
            break
        word = SPELLING.get(nxt, nxt)
    return word


_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
_TOKEN_RE = re.compile(r"[a-z0-9]+|[,;.!?]")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of `text` with clause punctuation (, ; . ! ?) kept as tokens of its own."""
    text = text.lower().translate(_APOSTROPHES)
    text = re.sub(r"n't\b", " not", text)
    text = re.sub(r"(\w)'s\b", r"\1", text)  # the dog's hat -> the dog hat
    text = re.sub(r"(\w)s'(?!\w)", r"\1s", text)  # the dogs' hats -> the dogs hats
    text = text.replace("'", "")  # i'm -> im (a stop word)
    return [SPELLING.get(t, t) for t in _TOKEN_RE.findall(text)]


def _words(text: str) -> list[str]:
    return [t for t in tokenize(text) if t[0].isalnum()]


@functools.lru_cache(maxsize=65536)
def prompt_lemmas(text: str) -> frozenset[str]:
    """Lemma set of every word in `text` (stop words included): what keyword presence is checked against (cached:
    a task's samples and the source repeat across a run's reward calls)."""
    return frozenset(lemma(w) for w in _words(text))


def _is_stop(word: str) -> bool:
    return word in STOP_WORDS or lemma(word) in STOP_WORDS


def _is_instruction_word(word: str) -> bool:
    return word in INSTRUCTION_WORDS or word in SLOT_WORDS or lemma(word) in INSTRUCTION_WORDS


def content_lemmas(words: list[str], *, instruction: bool = False) -> frozenset[str]:
    """Lemmas of the content words among `words`; on the instruction side edit verbs and slot names go too."""
    return frozenset(
        lemma(w)
        for w in words
        if w[0].isalnum() and not _is_stop(w) and not (instruction and _is_instruction_word(w))
    )


CATEGORY_LEXICONS: dict[str, frozenset[str]] = {
    name: frozenset(lemma(w) for w in _wordlist(lines)) for name, lines in _LEXICONS["categories"].items()
}

# Multi-word attribute values whose words are not values on their own ("stained glass", "golden hour").
CATEGORY_PHRASES: dict[tuple[str, ...], str] = {
    tuple(lemma(w) for w in phrase.split()): name
    for name, phrases in _LEXICONS["category_phrases"].items()
    for phrase in phrases
}

# Head nouns that belong to the category of the value right before them ("woodcut print", "foggy weather").
CATEGORY_HEADS: dict[str, frozenset[str]] = {
    name: frozenset(lemma(w) for w in _wordlist(lines)) for name, lines in _LEXICONS["category_heads"].items()
}


def category(word_lemma: str) -> str | None:
    """Attribute category of one lemma on its own ("blue" -> "colour", "3" -> "count"), or None."""
    if word_lemma.isdigit():
        return "count"
    for name, lexicon in CATEGORY_LEXICONS.items():
        if word_lemma in lexicon:
            return name
    return None


def tag_categories(words: list[str]) -> list[tuple[str, str | None]]:
    """(lemma, category) of every word, using single-word lexicons, `CATEGORY_PHRASES` and `CATEGORY_HEADS`."""
    lemmas = [lemma(w) for w in words]
    cats = [category(w) for w in lemmas]
    for phrase, name in CATEGORY_PHRASES.items():
        n = len(phrase)
        for i in range(len(lemmas) - n + 1):
            if tuple(lemmas[i : i + n]) == phrase:
                cats[i : i + n] = [name] * n
    for i in range(1, len(lemmas)):
        prev = cats[i - 1]
        if cats[i] is None and prev is not None and lemmas[i] in CATEGORY_HEADS.get(prev, ()):
            cats[i] = prev
    return list(zip(lemmas, cats))


def _content_tags(words: list[str], *, instruction: bool = False) -> list[tuple[str, str | None]]:
    """(lemma, category) of the content words among `words` (categories read in context first)."""
    tags = tag_categories([w for w in words if w[0].isalnum()])
    kept = content_lemmas(words, instruction=instruction)
    return [(w, c) for w, c in tags if w in kept]


def _of_categories(words: list[str], cats: set[str], *, instruction: bool = False) -> set[str]:
    """Content lemmas of `words` whose category (in context) is one of `cats`."""
    return {w for w, c in _content_tags(words, instruction=instruction) if c in cats}


def _categories(words: list[str], *, instruction: bool = True) -> set[str]:
    return {c for _, c in _content_tags(words, instruction=instruction) if c is not None}


def _all_values(words: list[str]) -> bool:
    """True when `words` have content and every content word is an attribute value ("at night")."""
    tags = _content_tags(words, instruction=True)
    return bool(tags) and all(c is not None for _, c in tags)


def _slots(words: list[str]) -> set[str | None]:
    """Slot categories named by `words` ("the color of the dogs" -> {"colour"})."""
    return {SLOT_WORDS[w] for w in words if w in SLOT_WORDS}


# ---------------------------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class KeywordSpec:
    """Lemmas the edited prompt must contain (`required`) and must not contain (`forbidden`); disjoint."""

    required: frozenset[str]
    forbidden: frozenset[str]

    def __post_init__(self) -> None:
        overlap = self.required & self.forbidden
        if overlap:
            raise ValueError(f"KeywordSpec: required and forbidden overlap in {sorted(overlap)}; expected disjoint")


@dataclass
class _Edit:
    """What the instruction's clauses ask for, before it is combined with the source."""

    forbidden: set[str]
    new: set[str]
    superseded: set[str]  # categories whose old source values are dropped from required
    relocate: bool = False  # drop the source's location phrase


# ------------------------------------------------------------------------------------------- the clauses

def _alternatives(phrases: str) -> str:
    """A regex group matching any of the "|"-separated phrases (word-token strings)."""
    return "(?:" + "|".join(p.strip() for p in phrases.split("|")) + ")"


_V_REMOVE = _alternatives(
    "remove|delete|erase|eliminate|exclude|omit|drop|ditch|discard|strip|lose|get rid of|take away|take out|take off"
)
_V_REPLACE = _alternatives("replace|swap out|swap|substitute|exchange|switch out|trade")
_V_CHANGE = _alternatives("change|turn|transform|convert|switch|alter|modify|morph|make|set|update|edit")
_V_PLACE = _alternatives("move|put|place|set|relocate|transport|bring|send|position")
_V_MAKE = _alternatives("make|turn|render|paint|color|dye|tint")
_V_ADD = _alternatives("add|include|insert|give|attach|introduce|show|depict|feature|draw|have|there should be|put|place")
_PREPS = _alternatives(
    "next to|in front of|on top of|to|into|onto|in|on|at|inside|under|near|beside|behind|above|below|over"
    "|underneath|atop|by|among|around"
)
_CUT = r"(?: " + _alternatives("from|off|out of|on|in|at|under|near|behind|beside|above|below|inside|around") + r" .*)?"
_LEAD = re.compile(
    r"^(?:" + _alternatives("please|now|also|then|and|just|kindly|can you|could you|would you|i want you to|let us|lets")
    + r" )+"
)

_EDIT_START = re.compile(
    rf"^(?:{_V_REMOVE}|{_V_REPLACE}|{_V_CHANGE}|{_V_PLACE}|{_V_MAKE}|{_V_ADD}|without|no|do not|please|instead)\b"
)


def _split_clauses(words_and_punct: list[str]) -> list[str]:
    """Split an instruction into edit clauses (token strings); ", and/then" only split before a new edit."""
    clauses: list[list[str]] = [[]]
    i = 0
    while i < len(words_and_punct):
        tok = words_and_punct[i]
        if tok in {".", "!", "?"}:
            clauses.append([])
        elif tok in {",", ";", "and", "then"}:
            rest = " ".join(t for t in words_and_punct[i + 1 :] if t not in {",", ";", "and", "then"})
            if _EDIT_START.match(rest) and clauses[-1] and clauses[-1][:2] != ["instead", "of"]:
                clauses.append([])
            elif tok not in {",", ";"}:
                clauses[-1].append(tok)
        else:
            clauses[-1].append(tok)
        i += 1
    return [" ".join(c) for c in clauses if c]


def _slot_categories(slots: set[str | None]) -> set[str]:
    return {s for s in slots if s is not None and s != "location"}


def _replacement(old: str, new: str, source: frozenset[str], edit: _Edit, *, explicit: bool = False) -> None:
    """Rule 2: `old` becomes `new`; `explicit` marks "from X to Y", where X only names old values."""
    x_words, y_words = old.split(), new.split()
    cx = content_lemmas(x_words, instruction=True)
    cy = content_lemmas(y_words, instruction=True)
    slots = _slots(x_words) | _slots(y_words)
    cats = _categories(y_words) | _slot_categories(slots)
    if explicit:
        forbidden = cx - cy
    elif slots or _all_values(y_words):
        # "the color of the dogs" / "change the dogs to blue": the object stays, named old values go
        forbidden = _of_categories(x_words, cats, instruction=True) - cy
    else:
        forbidden = cx - cy
    edit.forbidden |= forbidden
    edit.new |= cy
    edit.superseded |= cats | _count_by_article(y_words, source)
    edit.relocate |= "location" in slots


def _attribute_change(words: list[str], source: frozenset[str], edit: _Edit) -> None:
    """Rule 4: the words are the new look ("make it night", "make the dogs blue"); old values are superseded."""
    slots = _slots(words)
    tags = _content_tags(words, instruction=True)
    new = {w for w, _ in tags}
    if len(tags) >= 3 and tags[-1][1] is not None:  # "make the red dogs blue": red is the old value
        old = {w for (w, c), (_, c_next) in itertools.pairwise(tags) if c == tags[-1][1] and c_next is None}
        edit.forbidden |= old - {tags[-1][0]}
        new -= old - {tags[-1][0]}
    edit.new |= new
    edit.superseded |= _categories(words) | _slot_categories(slots) | _count_by_article(words, source)
    edit.relocate |= "location" in slots


def _addition(words: list[str], source: frozenset[str], edit: _Edit) -> None:
    """Rules 5 and 6: new content; an attribute-only clause or a value on a source noun is an attribute change."""
    if _all_values(words) or _slots(words):
        _attribute_change(words, source, edit)
        return
    tags = _content_tags(words, instruction=True)
    edit.new |= {w for w, _ in tags}
    for i, (_, cat) in enumerate(tags):  # "there should be four elephants": a new count of a source noun
        if cat is None:
            continue
        head = next((w for w, c in tags[i + 1 :] if c is None), None)
        if head is not None and head in source:
            edit.superseded.add(cat)


def _count_by_article(words: list[str], source: frozenset[str]) -> set[str]:
    """{"count"} when an article directly precedes a noun the source counts ("make it a dog" vs "two dogs")."""
    if not any(category(w) == "count" for w in source):
        return set()
    for i, word in enumerate(words):
        if word not in _ARTICLES:
            continue
        rest = [lemma(w) for w in words[i + 1 :]]
        noun = next((w for w in rest if category(w) is None), None)  # skip "a red dog" -> "dog"
        if noun is not None and noun in source:
            return {"count"}
    return set()


def _parse_clause(clause: str, source: frozenset[str], edit: _Edit) -> None:
    """Read one clause with the first matching rule (see the module docstring) into `edit`."""
    clause = _LEAD.sub("", clause).strip()
    if not clause:
        return
    # 1. removal
    m = re.match(rf"^(?:do not|never) (?:include|show|add|draw|put|have|want|depict) (?P<x>.+?){_CUT}$", clause)
    m = m or re.match(rf"^{_V_REMOVE} (?P<x>.+?){_CUT}$", clause)
    m = m or re.match(r"^take (?P<x>.+?) (?:away|out|off)\b.*$", clause)
    if m:
        edit.forbidden |= content_lemmas(m["x"].split(), instruction=True)
        return
    m = re.match(rf"^(?P<pre>.*?)\b(?:without|no more|no|minus|sans) (?P<x>.+?){_CUT}$", clause)
    if m:
        edit.forbidden |= content_lemmas(m["x"].split(), instruction=True)
        _parse_clause(m["pre"], source, edit)
        return
    # 2. replacement
    m = re.match(r"^(?P<y>.+?) instead of (?P<x>.+)$", clause) or re.match(
        r"^instead of (?P<x>.+?) (?P<y>(?:show|use|make|have|draw|add|put|depict|render) .+)$", clause
    )
    if m:
        _replacement(m["x"], m["y"], source, edit)
        return
    m = re.match(r"^(?P<pre>.*?)\bfrom (?P<x>.+?) (?:in)?to (?P<y>.+)$", clause)
    if m:
        _replacement(m["pre"] + " " + m["x"], m["y"], source, edit, explicit=True)
        # the words before "from" name the object or slot ("change the dogs from red to blue")
        edit.forbidden -= content_lemmas(m["pre"].split(), instruction=True)
        return
    m = re.match(rf"^(?P<verb>{_V_REPLACE}) (?P<x>.+?) (?P<prep>with|for|by|to|into|in favor of) (?P<y>.+)$", clause)
    if m:
        x, y = m["x"], m["y"]
        if m["verb"] == "substitute" and m["prep"] == "for":
            in_x = bool(content_lemmas(x.split(), instruction=True) & source)
            in_y = bool(content_lemmas(y.split(), instruction=True) & source)
            if in_y and not in_x:
                x, y = y, x
        _replacement(x, y, source, edit)
        return
    m = re.match(rf"^{_V_CHANGE} (?P<x>.+?) into (?P<y>.+)$", clause) or re.match(
        rf"^{_V_CHANGE} (?P<x>.+?) to (?P<y>.+)$", clause
    )
    if m and not re.match(rf"^{_V_PLACE} ", clause):
        _replacement(m["x"], m["y"], source, edit)
        return
    # 3. relocation / placement
    m = re.match(rf"^{_V_PLACE} (?P<x>.+?) {_PREPS} (?P<y>.+)$", clause)
    if m:
        x_words = m["x"].split()
        cx = content_lemmas(x_words, instruction=True)
        cy = content_lemmas(m["y"].split(), instruction=True)
        if cx <= source and (cx or any(w in _PRONOUNS or w in SLOT_WORDS for w in x_words)):
            edit.new |= cy
            edit.relocate = True
        else:
            edit.new |= cx | cy
        return
    # 4. attribute change
    m = re.match(rf"^{_V_MAKE} (?P<x>.+)$", clause)
    if m:
        _attribute_change(m["x"].split(), source, edit)
        return
    # 5. addition, 6. anything else
    m = re.match(rf"^{_V_ADD} (?P<x>.+)$", clause)
    _addition((m["x"] if m else clause).split(), source, edit)


def _normalise_instruction(instruction: str) -> list[str]:
    text = " ".join(tokenize(instruction))
    for pattern, repl in _SLOT_PHRASES:
        text = re.sub(pattern, repl, text)
    return text.split()


# ------------------------------------------------------------------------------------------- the source


def _location_phrase(source_tokens: list[str]) -> frozenset[str]:
    """Content lemmas of the source's last location phrase that occur nowhere else in the source."""
    phrases: list[tuple[int, int]] = []
    i = 0
    while i < len(source_tokens):
        if source_tokens[i] in _LOCATION_PREPS:
            j = i + 1
            while j < len(source_tokens):
                t = source_tokens[j]
                if not t[0].isalnum() or t in _PHRASE_BREAKS or (t.endswith("ing") and len(t) > 5):
                    break
                j += 1
            phrases.append((i, j))
            i = j
        else:
            i += 1
    for start, end in reversed(phrases):
        tags = _content_tags(source_tokens[start + 1 : end])
        if tags and not all(c in ("time_weather", "style") for _, c in tags):
            rest = content_lemmas(source_tokens[:start] + source_tokens[end:])
            return frozenset({w for w, _ in tags} - rest)
    return frozenset()


@functools.lru_cache(maxsize=65536)
def extract_keywords(source: str, instruction: str) -> KeywordSpec:
    """Required and forbidden keyword lemmas of an edit task (rules in the module docstring; cached)."""
    if not isinstance(source, str):
        raise TypeError(f"extract_keywords: source must be a str, got {type(source).__name__}: {source!r}")
    if not isinstance(instruction, str):
        raise TypeError(
            f"extract_keywords: instruction must be a str, got {type(instruction).__name__}: {instruction!r}"
        )
    source_tokens = tokenize(source)
    source_content = content_lemmas(source_tokens)
    edit = _Edit(forbidden=set(), new=set(), superseded=set())
    for clause in _split_clauses(_normalise_instruction(instruction)):
        _parse_clause(clause, source_content, edit)
    superseded = _of_categories(source_tokens, edit.superseded)
    if edit.relocate:
        superseded |= _location_phrase(source_tokens)
    required = (source_content - edit.forbidden - superseded) | edit.new
    return KeywordSpec(required=frozenset(required), forbidden=frozenset(edit.forbidden - required))
