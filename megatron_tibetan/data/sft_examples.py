"""SFT examples from line-aligned parallel files and chat JSONL: read, normalise, phrase, deduplicate,
split and leak-check. Tokenising and templating come later (:mod:`megatron_tibetan.data.chat`).

Parallel files (``lang=SOURCE,TIBETAN``, plain or .gz/.xz/.zst): line N of one translates line N of the
other; files of different lengths are an error naming both files and their line counts. Both sides are
normalised with ``text.normalize`` (evaluation normalises its sources the same way). A pair gives the
example ``lang``→bo; with ``reverse_share`` > 0 that share of pairs (drawn by a hash of the seed and
the pair) also gives bo→``lang``, an anchor against forgetting the other direction. The user turn is
one phrasing of :mod:`megatron_tibetan.data.prompts`, drawn per pair and direction.

Chat JSONL: one ``{"messages": [{"role": ..., "content": ...}, ...]}`` object per line, roles
``system``/``user``/``assistant``, at least one assistant turn, the last turn the assistant's; other
keys of the object are allowed (an ``id``, a source), keys of a message other than role and content
are an error (they could change what a template renders). Contents get the Tibetan rules of
``text.normalize`` and keep their layout as written: newlines, blank lines, indentation and runs of
spaces (code, lists, paragraphs) are trained as they are (``normalize_messages``; ``keep_layout=False``
collapses them as earlier versions did). A malformed line is an error naming file and line.

Counted, not dropped: ``normalized`` per direction, the examples a normalisation rule changed (a pair
whose source or Tibetan side changed, a conversation with a changed message), and
``normalized_messages``, the messages so changed.

Dropped and counted by reason (per direction): ``empty`` (an empty side or message after
normalisation, or a blank JSONL line), ``duplicate`` (same direction and texts as an earlier example),
``leak_exclude`` (a Tibetan segment that is also a line of an ``exclude`` file such as FLORES dev),
``leak_valid`` (a training example sharing a Tibetan segment with the held-out split). The Tibetan
segments of an example are the Tibetan side of a pair, or each line of a message with at least half
Tibetan characters; segments are compared exactly after normalisation.

Held-out split: examples connected by a shared Tibetan segment (the zh→bo and en→bo examples of one
NTREX line, a pair and its reverse) form one group and go to the same side, so the split itself never
leaks; groups are drawn in a seeded order until ``valid_fraction`` of the examples are held out. The
``leak_valid`` check still runs on the result and is reported (0 by construction).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from megatron_tibetan.data.chat import ROLES
from megatron_tibetan.data.prompts import draw_phrasing, translation_messages
from megatron_tibetan.text import normalize, tibetan_ratio
from megatron_tibetan.text.readers import InputError, read_lines

MESSAGES = "messages"  # the direction name of chat examples
DROP_REASONS = ("empty", "duplicate", "leak_exclude", "leak_valid", "special_token", "too_long")
TIBETAN_SEGMENT_RATIO = 0.5  # a message line with at least this share of Tibetan characters is a Tibetan segment


@dataclass
class Example:
    messages: list[dict]
    direction: str  # "zh-bo", "en-bo", "bo-zh", "bo-en" or "messages"
    origin: str  # "file:line" of the record (pairs: the source-language file)
    tibetan: tuple[str, ...]  # normalised Tibetan segments (leak check, split groups)
    key: bytes  # identity for the duplicate check
    phrasing: int | None = None  # index into prompts.phrasings(direction) for pairs


@dataclass
class Counts:
    """Examples in, kept and dropped by reason, per direction; ``in = train + valid + dropped``."""

    examples_in: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dropped: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    leaks: list[str] = field(default_factory=list)  # origins of the first leaked examples
    normalized: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # examples a rule changed
    normalized_messages: int = 0  # chat messages a rule changed

    def add(self, direction: str) -> None:
        self.examples_in[direction] += 1

    def drop(self, direction: str, reason: str) -> None:
        assert reason in DROP_REASONS, reason
        self.dropped[direction][reason] += 1


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.digest()


def _unit(seed: int, *parts: str) -> float:
    """A number in [0, 1) fixed by the seed and the parts (order-independent draws)."""
    return int.from_bytes(_digest(str(seed), *parts)[:8], "little") / 2**64


def read_pairs(source_path: str, tibetan_path: str) -> Iterator[tuple[int, str, str]]:
    """(line, source text, Tibetan text) of two line-aligned files, not normalised."""
    sources, tibetans = read_lines(source_path), read_lines(tibetan_path)
    if len(sources) != len(tibetans):
        raise InputError(
            f"parallel files are not line-aligned: {source_path} has {len(sources)} lines, "
            f"{tibetan_path} has {len(tibetans)}"
        )
    for line, (source, tibetan) in enumerate(zip(sources, tibetans), 1):
        yield line, source, tibetan


def pair_examples(lang: str, source_path: str, tibetan_path: str, counts: Counts, seed: int,
                  reverse_share: float = 0.0) -> Iterator[Example]:
    """The ``lang``→bo examples of a parallel file pair, and the drawn share of bo→``lang`` ones."""
    forward, reverse = f"{lang}-bo", f"bo-{lang}"
    for line, source_raw, tibetan_raw in read_pairs(source_path, tibetan_path):
        source, tibetan = normalize(source_raw), normalize(tibetan_raw)
        changed = source != source_raw or tibetan != tibetan_raw
        origin = f"{source_path}:{line}"
        wanted = [(forward, lang, "bo", source, tibetan)]
        if reverse_share > 0 and _unit(seed, "reverse", source, tibetan) < reverse_share:
            wanted.append((reverse, "bo", lang, tibetan, source))
        for direction, src_lang, tgt_lang, src, tgt in wanted:
            counts.add(direction)
            counts.normalized[direction] += changed
            if not src or not tgt:
                counts.drop(direction, "empty")
                continue
            index = draw_phrasing(src_lang, tgt_lang, seed, f"{src}\0{tgt}")
            messages = translation_messages(src, src_lang, tgt_lang, index, answer=tgt)
            yield Example(messages, direction, origin, (tibetan,), _digest(direction, src, tgt), index)


def _parse_messages(where: str, text: str) -> list[dict]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: malformed JSON line ({error})") from None
    if not isinstance(record, dict) or "messages" not in record:
        raise InputError(f"{where}: expected an object with a 'messages' list")
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: 'messages' must be a non-empty list")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: messages[{k}] must be an object with string 'role' and 'content'")
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise InputError(f"{where}: messages[{k}] has key(s) {', '.join(extra)}; only role and content are supported")
        if m["role"] not in ROLES:
            raise InputError(f"{where}: messages[{k}] has unknown role {m['role']!r} (expected {', '.join(ROLES)})")
    if not any(m["role"] == "assistant" for m in messages):
        raise InputError(f"{where}: no assistant turn (nothing to train on)")
    if messages[-1]["role"] != "assistant":
        raise InputError(f"{where}: the last turn is {messages[-1]['role']!r}; a conversation must end with the assistant's")
    if messages[0]["role"] == "assistant":
        raise InputError(f"{where}: messages[0] is an assistant turn; a conversation starts with a system or user message")
    return messages


def tibetan_segments(text: str) -> list[str]:
    return [line for line in text.split("\n") if line and tibetan_ratio(line) >= TIBETAN_SEGMENT_RATIO]


def message_examples(path: str, counts: Counts, normalize_messages: bool = True,
                     keep_layout: bool = True) -> Iterator[Example]:
    """The conversations of a chat JSONL file."""
    for line, text in enumerate(read_lines(path), 1):
        counts.add(MESSAGES)
        if not text.strip():
            counts.drop(MESSAGES, "empty")
            continue
        messages = _parse_messages(f"{path}:{line}", text)
        if normalize_messages:
            normal = [{"role": m["role"], "content": normalize(m["content"], keep_newlines=True, keep_layout=keep_layout)}
                      for m in messages]
            changed = sum(a["content"] != b["content"] for a, b in zip(messages, normal))
            counts.normalized_messages += changed
            counts.normalized[MESSAGES] += changed > 0
            messages = normal
        if not all(m["content"].strip() for m in messages):
            counts.drop(MESSAGES, "empty")
            continue
        segments = tuple(dict.fromkeys(s for m in messages for s in tibetan_segments(m["content"])))
        key = _digest(*(f"{m['role']}\0{m['content']}" for m in messages))
        yield Example(messages, MESSAGES, f"{path}:{line}", segments, key)


def read_exclude(paths: Iterable[str]) -> tuple[set[str], dict[str, int]]:
    """Normalised non-empty lines of the exclude files, and the line count of each file."""
    lines: set[str] = set()
    sizes = {}
    for path in paths:
        texts = read_lines(path)
        lines.update(t for t in map(normalize, texts) if t)
        sizes[str(path)] = len(texts)
    return lines, sizes


MAX_LEAKS_REPORTED = 20


def deduplicate(examples: Iterable[Example], counts: Counts) -> list[Example]:
    seen: set[bytes] = set()
    kept = []
    for ex in examples:
        if ex.key in seen:
            counts.drop(ex.direction, "duplicate")
            continue
        seen.add(ex.key)
        kept.append(ex)
    return kept


def drop_leaks(examples: list[Example], banned: set[str], reason: str, counts: Counts) -> list[Example]:
    kept = []
    for ex in examples:
        if banned.intersection(ex.tibetan):
            counts.drop(ex.direction, reason)
            if len(counts.leaks) < MAX_LEAKS_REPORTED:
                counts.leaks.append(f"{reason}: {ex.direction} {ex.origin}")
            continue
        kept.append(ex)
    return kept


def groups(examples: list[Example]) -> np.ndarray:
    """A group id per example: examples sharing a Tibetan segment (directly or through others) share it."""
    parent = list(range(len(examples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, ex in enumerate(examples):
        for segment in ex.tibetan:
            j = first.setdefault(segment, i)
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(len(examples))], dtype=np.int64)


def split(examples: list[Example], valid_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, valid): whole groups are held out, in a seeded order, until ``valid_fraction`` of the
    examples are (at least one example when the fraction is above 0)."""
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid fraction {valid_fraction} must be in [0, 1)")
    if valid_fraction == 0 or not examples:
        return list(examples), []
    group = groups(examples)
    ids, sizes = np.unique(group, return_counts=True)
    want = max(1, round(valid_fraction * len(examples)))
    held, total = set(), 0
    for k in np.random.default_rng(seed).permutation(len(ids)):
        if total >= want:
            break
        held.add(int(ids[k]))
        total += int(sizes[k])
    train = [ex for ex, g in zip(examples, group) if int(g) not in held]
    valid = [ex for ex, g in zip(examples, group) if int(g) in held]
    return train, valid
