"""Generated text with learnable structure, for the language-model example.

Sentences of a tiny English grammar, written character by character:

    sentence := det(n) [adj] noun(n) verb(n) det(m) [adj] noun(m) ["near" det(k) [adj] noun(k)] "."

where n, m, k are grammatical numbers (singular or plural) and the determiner, noun and verb
agree in number ("a quick fox sees two cats." but never "a fox see ..."). A model has to learn
to spell the words, the order of the parts of speech, and agreement across an optional
adjective: far below the 3.3 nats of a uniform guess, but never zero (the choices are random).
``grammatical`` checks sampled text against the grammar.
"""

import numpy as np

DETS = {"sg": ["a", "the", "one", "every"], "pl": ["the", "two", "some", "many"]}
NOUNS = {
    "sg": ["cat", "dog", "bird", "fox", "child", "mouse"],
    "pl": ["cats", "dogs", "birds", "foxes", "children", "mice"],
}
VERBS = {
    "sg": ["sees", "chases", "likes", "follows", "finds"],
    "pl": ["see", "chase", "like", "follow", "find"],
}
ADJS = ["red", "small", "quick", "lazy", "old", "happy"]

ALPHABET = " .abcdefghijklmnopqrstuvwxyz"
VOCAB = len(ALPHABET)
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def _noun_phrase(rng: np.random.Generator) -> tuple[list[str], str]:
    number = "sg" if rng.random() < 0.5 else "pl"
    words = [rng.choice(DETS[number])]
    if rng.random() < 0.4:
        words.append(rng.choice(ADJS))
    words.append(rng.choice(NOUNS[number]))
    return words, number


def sentence(rng: np.random.Generator) -> str:
    subject, number = _noun_phrase(rng)
    obj, _ = _noun_phrase(rng)
    words = [*subject, rng.choice(VERBS[number]), *obj]
    if rng.random() < 0.3:
        words += ["near", *_noun_phrase(rng)[0]]
    return " ".join(words) + "."


def corpus(n_chars: int, seed: int) -> np.ndarray:
    """At least ``n_chars`` characters of sentences, as token ids (uint8)."""
    rng = np.random.default_rng(seed)
    parts, length = [], 0
    while length < n_chars:
        parts.append(sentence(rng))
        length += len(parts[-1]) + 1
    return encode(" ".join(parts))


def encode(text: str) -> np.ndarray:
    return np.array([_INDEX[c] for c in text], dtype=np.uint8)


def decode(ids) -> str:
    return "".join(ALPHABET[int(i)] for i in ids)


def batch(tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int):
    """Inputs and next-character targets, ``(batch_size, seq_len)`` each.

    The windows depend only on ``(seed, step)``, so training resumed at a step sees
    exactly the batches an uninterrupted run would.
    """
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len - 1, batch_size)
    windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int32)
    return windows[:, :-1], windows[:, 1:]


def grammatical(text: str) -> bool:
    """Whether ``text`` (one sentence, without the final ".") follows the grammar."""
    words = text.split(" ")
    position = 0

    def noun_phrase():
        nonlocal position
        det = words[position] if position < len(words) else None
        numbers = [n for n in ("sg", "pl") if det in DETS[n]]
        position += 1
        if position < len(words) and words[position] in ADJS:
            position += 1
        noun = words[position] if position < len(words) else None
        position += 1
        return [n for n in numbers if noun in NOUNS[n]]

    subject = noun_phrase()
    verb = words[position] if position < len(words) else None
    position += 1
    if not any(verb in VERBS[n] for n in subject):
        return False
    if not noun_phrase():
        return False
    if position == len(words):
        return True
    if words[position] != "near":
        return False
    position += 1
    return bool(noun_phrase()) and position == len(words)
