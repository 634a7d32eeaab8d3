"""Extend a byte-level BPE tokenizer with Tibetan tokens, keeping every base token's id and its
encoding of text without Tibetan (:func:`extend_bpe`; :mod:`.extend` chooses it or
:mod:`.sentencepiece_extend` from the base).

How: the pre-tokenizer isolates Tibetan syllables, or tsheg-joined runs of them (:mod:`.pretokenize`); each Tibetan pre-token of the
normalised corpus is cut by the *base* BPE model; BPE is trained on those base-token sequences (each
distinct base token stands in as one private-use character, so HF ``tokenizers`` trains the merges);
the learned merges go after the base merges and the new tokens after the base ids. Base merges always
rank first, so encoding first reproduces the base cut that training started from, then applies the new
merges in the order they were learned.

Only merges whose result contains a Tibetan lead byte pair (UTF-8 ``E0 BC..BF``, the start of a
character in U+0F00..U+0FFF) are kept: such a merge can never fire on text without Tibetan, so
non-Tibetan text encodes exactly as with the base tokenizer.
"""

from __future__ import annotations

import json
import re
import resource
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from megatron_tibetan.text import normalize
from megatron_tibetan.text.readers import iter_texts
from megatron_tibetan.tokenizer.base import BYTE_LEVEL_BPE, load_tokenizer
from megatron_tibetan.tokenizer.extension_file import EXTENSION_FILE, line_limits, portable_spec
from megatron_tibetan.tokenizer.pretokenize import tibetan_pattern, tibetan_pre_tokenizer

# byte-level (GPT-2 alphabet) spelling of UTF-8 E0 followed by BC..BF: a Tibetan character starts here
_TIBETAN_BYTES = re.compile("à[¼½¾¿]")
_PUA_START = 0xF0000  # Supplementary Private Use Area-A: 65,534 stand-ins for base tokens
_OVERSAMPLE = 1.1  # train a few more merges than asked: some are dropped by the Tibetan-only rule


def tibetan_backend(base, unit: str = "run") -> "tokenizers.Tokenizer":  # noqa: F821
    """The base ``tokenizers.Tokenizer`` with the Tibetan-aware pre-tokenizer for ``unit`` (same model)."""
    from tokenizers import Tokenizer

    spec = json.loads(base.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec["pre_tokenizer"]):
        raise ValueError(f"base tokenizer: model {spec['model']['type']}, expected a byte-level BPE "
                         "(SentencePiece bases: tokenizer.sentencepiece_extend)")
    spec["pre_tokenizer"] = tibetan_pre_tokenizer(spec["pre_tokenizer"], unit)
    return Tokenizer.from_str(json.dumps(spec))


def count_tibetan_units(backend, lines: Iterable[str]) -> tuple[Counter, dict]:
    """Counts of the Tibetan pre-tokens (byte-level strings) of the normalised ``lines``."""
    units: Counter = Counter()
    stats = Counter()
    for line in lines:
        stats["lines"] += 1
        text = normalize(line)
        if not text:
            stats["empty_lines"] += 1
            continue
        stats["chars"] += len(text)
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)
                                                                if backend.normalizer else text):
            if _TIBETAN_BYTES.search(piece):
                units[piece] += 1
    stats["tibetan_units"] = sum(units.values())
    stats["distinct_tibetan_units"] = len(units)
    return units, dict(stats)


def train_tibetan_merges(base, units: Counter, num_new_tokens: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """BPE merges (byte-level strings) on top of the base cut of ``units``, ranked after the base merges;
    they create at most ``num_new_tokens`` tokens that are not in the base vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    model = base.backend_tokenizer.model
    stand_in: dict[str, str] = {}  # base token -> one private-use character
    words = {}
    for piece in units:
        cut = [t.value for t in model.tokenize(piece)]
        for token in cut:
            if token not in stand_in:
                stand_in[token] = chr(_PUA_START + len(stand_in))
        words[piece] = "".join(stand_in[token] for token in cut)
    if len(stand_in) > 65534:
        raise ValueError(f"{len(stand_in)} distinct base tokens in the Tibetan units; at most 65,534 supported")
    spelled = {v: k for k, v in stand_in.items()}

    trainer = trainers.BpeTrainer(
        vocab_size=len(stand_in) + int(num_new_tokens * _OVERSAMPLE) + 64, min_frequency=min_frequency,
        show_progress=True, special_tokens=[],
    )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # one string per distinct unit: the unit's stand-in word repeated by its count
    bpe.train_from_iterator((" ".join([words[u]] * n) for u, n in units.items()), trainer, length=len(units))
    learned = json.loads(bpe.to_str())["model"]["merges"]

    base_spec = json.loads(base.backend_tokenizer.to_str())["model"]
    base_merges = {tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in base_spec["merges"]}
    known = set(base_spec["vocab"])
    merges, new = [], set()
    for m in learned:
        a, b = (m if isinstance(m, list) else m.split(" ", 1))
        a, b = "".join(spelled[c] for c in a), "".join(spelled[c] for c in b)
        if a not in known or b not in known or (a, b) in base_merges or not _TIBETAN_BYTES.search(a + b):
            continue  # an operand that was dropped, a base merge again, or could fire outside Tibetan
        if a + b not in known:
            if len(new) == num_new_tokens:
                break
            new.add(a + b)
            known.add(a + b)
        base_merges.add((a, b))
        merges.append((a, b))
    return merges


def extended_backend(base, merges: list[tuple[str, str]], unit: str = "run"):
    """The base tokenizer with the Tibetan pre-tokenizer and ``merges`` appended; new ids from ``len(base)``."""
    from tokenizers import Tokenizer

    spec = json.loads(tibetan_backend(base, unit).to_str())
    vocab, next_id = spec["model"]["vocab"], len(base)
    if any(i >= next_id for i in vocab.values()):
        raise ValueError(f"base tokenizer: model ids reach past len(tokenizer) = {next_id}")
    # tokenizers numbers added tokens that the model lacks from the model's vocabulary *count*; with
    # new ids after them they would move, so the model vocabulary holds them at their own ids
    for added in spec["added_tokens"]:
        if vocab.setdefault(added["content"], added["id"]) != added["id"]:
            raise ValueError(f"base tokenizer: added token {added['content']!r} has two ids")
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = next_id
            next_id += 1
    string_merges = isinstance(spec["model"]["merges"][0], str)
    spec["model"]["merges"] += [f"{a} {b}" if string_merges else [a, b] for a, b in merges]
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def save_extended(base, base_spec: str, merges: list[tuple[str, str]], output: str | Path, info: dict) -> dict:
    """Write an HF tokenizer directory (the base's config, special tokens and chat template kept) and
    ``extension.json``; returns the extension description."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(output)
    backend = extended_backend(base, merges, info["unit"])
    backend.save(str(output / "tokenizer.json"))
    num_new = backend.get_vocab_size(with_added_tokens=True) - len(base)
    extension = {
        "base": portable_spec(base_spec),
        "base_kind": BYTE_LEVEL_BPE,
        "base_vocab_size": len(base),
        "num_new_tokens": num_new,
        "new_token_ids": [len(base), len(base) + num_new],  # [first, end) like range()
        "vocab_size": len(base) + num_new,
        "num_new_merges": len(merges),
        "tibetan_pre_tokenizer_pattern": tibetan_pattern(info["unit"]),
        **info,
    }
    (output / EXTENSION_FILE).write_text(json.dumps(extension, indent=2, ensure_ascii=False) + "\n")
    return extension


def learn_extension(base_spec: str, corpus: list[str | Path], num_new_tokens: int,
                    max_lines_per_file: int | None | list[int | None] = None, min_frequency: int = 2,
                    unit: str = "run"):
    """(base tokenizer, merges, info) from a corpus; ``info`` has the corpus statistics, time and memory.
    ``max_lines_per_file``: one limit for every file, or one per file (None: the whole file)."""
    start = time.perf_counter()
    limits = line_limits(corpus, max_lines_per_file)
    base = load_tokenizer(base_spec)
    backend = tibetan_backend(base, unit)
    units, stats = Counter(), Counter()
    for path, limit in zip(corpus, limits):
        lines = tqdm(iter_texts([path], limit=limit), desc=f"units {Path(path).name}", unit=" lines",
                     total=limit, mininterval=5)
        file_units, file_stats = count_tibetan_units(backend, lines)
        units.update(file_units)
        stats.update(file_stats)
    if not units:
        raise ValueError(f"corpus {', '.join(map(str, corpus))}: no Tibetan text in {stats['lines']} lines")
    counted = time.perf_counter()
    merges = train_tibetan_merges(base, units, num_new_tokens, min_frequency)
    made = len({a + b for a, b in merges} - set(base.backend_tokenizer.get_vocab(with_added_tokens=False)))
    if made < num_new_tokens:
        print(f"[extend] {made} new tokens, fewer than the {num_new_tokens} asked: every Tibetan {unit} seen at "
              f"least {min_frequency} times is already one token (a larger corpus or unit='run' gives more)")
    stats["distinct_tibetan_units"] = len(units)
    info = {
        "unit": unit,
        "corpus": [str(p) for p in corpus],
        "max_lines_per_file": limits,
        "min_frequency": min_frequency,
        "corpus_stats": dict(stats),
        "seconds_counting": round(counted - start, 1),
        "seconds_training": round(time.perf_counter() - counted, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    return base, merges, info


def truncate_merges(merges: list[tuple[str, str]], base, num_new_tokens: int) -> list[tuple[str, str]]:
    """The prefix of ``merges`` that creates ``num_new_tokens`` new tokens (BPE with a smaller budget)."""
    vocab = set(base.backend_tokenizer.get_vocab(with_added_tokens=False))
    new = 0
    for i, (a, b) in enumerate(merges):
        if a + b not in vocab:
            if new == num_new_tokens:
                return merges[:i]
            new += 1
            vocab.add(a + b)
    return merges


def extend_bpe(base_spec: str, corpus: list[str | Path], num_new_tokens: int, output: str | Path,
               max_lines_per_file: int | None | list[int | None] = None, min_frequency: int = 2,
               unit: str = "run") -> dict:
    """Train ``num_new_tokens`` Tibetan BPE tokens on ``corpus`` and save the extended tokenizer in ``output``."""
    base, merges, info = learn_extension(base_spec, corpus, num_new_tokens, max_lines_per_file, min_frequency, unit)
    return save_extended(base, base_spec, merges, output, info)
