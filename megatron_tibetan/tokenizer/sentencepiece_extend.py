"""Extend a SentencePiece tokenizer (Llama 2, Gemma, Mistral and their descendants) with Tibetan pieces,
keeping every base piece's id and its encoding of text without Tibetan.

How (the Chinese-LLaMA / TiLamb recipe, with the ordering made explicit):

1. SentencePiece trains a Tibetan model on the normalised corpus (``text.normalize``; lines without
   Tibetan are skipped), with the base model's own normalisation and splitting settings, so its pieces
   are cut the way the merged model will see the text.
2. Its pieces that hold a Tibetan character and are not base pieces become new pieces, single
   characters first (a merged piece is only reachable from its characters), then in the Tibetan model's
   order; a piece that no two known pieces join into cannot be produced by BPE encoding and is dropped.
3. They are appended to the base ``ModelProto`` with scores below every base score, in that order.
   SentencePiece's BPE merges the adjacent pair whose joined piece scores highest, so base merges still
   come first; a new piece contains a Tibetan character, so it can never form in text without one:
   every base id and every non-Tibetan encoding is unchanged. Unseen Tibetan characters still fall back
   to the base's byte pieces.
4. The output is a standard HF directory: the merged ``tokenizer.model``, a fast ``tokenizer.json`` (the
   base's pipeline, with the new pieces and the merges ``transformers``' SentencePiece converter derives
   for them appended after the base merges), the base's config (special tokens, chat template), and
   ``extension.json`` for checkpoint conversion.

Pieces: ``model_type="bpe"`` (default) or ``"unigram"``. Unigram pieces are not built by merges, so in a
BPE base some cannot be reached; at equal size BPE pieces give the lower fertility (README, section 2).
"""

from __future__ import annotations

import io
import json
import re
import resource
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from megatron_tibetan.text import normalize
from megatron_tibetan.tokenizer.base import SENTENCEPIECE, load_tokenizer, sentencepiece_model_file
from megatron_tibetan.text.readers import iter_texts
from megatron_tibetan.tokenizer.extension_file import EXTENSION_FILE, line_limits, portable_spec
from megatron_tibetan.tokenizer.sentencepiece_model import (
    BYTE, NORMAL, SENTENCEPIECE_FILE, fast_backend, model_type, read_model_proto,
)

PIECE_TYPES = ("bpe", "unigram")
DEFAULT_PIECE_TYPE = "bpe"
_TIBETAN = re.compile("[\u0f00-\u0fff]")
# train more pieces than asked: non-Tibetan and base pieces are left out, and more than half of the unigram
# pieces are no join of two known pieces (measured on Nanhai + Kangyur), which BPE encoding cannot produce
_OVERSAMPLE = {"bpe": 1.1, "unigram": 2.5}
# SentencePiece's built-in normalisation rules; a base with its own rule table trains with "identity"
_BUILTIN_RULES = ("identity", "nfkc", "nmt_nfkc", "nfkc_cf", "nmt_nfkc_cf")


def sentencepiece_base(spec: str | Path):
    """(HF tokenizer, ModelProto, model file) of a SentencePiece base, checked: BPE pieces, byte fallback,
    and no HF-added tokens past the SentencePiece vocabulary (new ids start right after it)."""
    path = sentencepiece_model_file(spec)
    if path is None:
        raise ValueError(f"tokenizer '{spec}': no SentencePiece model ({SENTENCEPIECE_FILE})")
    proto = read_model_proto(path)
    if model_type(proto) != "bpe":
        raise ValueError(f"{path}: a SentencePiece {model_type(proto)} model; pieces can be merged into a BPE model "
                         "(Llama 2, Gemma, Mistral), whose encoding order the piece scores define")
    if not proto.trainer_spec.byte_fallback:
        raise ValueError(
            f"{path}: the SentencePiece model has no byte fallback: every Tibetan character the new pieces do not "
            "cover (rare letters, marks, symbols) would become <unk>, so such text no longer decodes to itself "
            "and the model cannot read or write it; extend a base with byte_fallback (Llama 2, Gemma, Mistral)")
    if not any(p.type == BYTE for p in proto.pieces):
        raise ValueError(f"{path}: byte_fallback is set but the model has no byte pieces <0x00>..<0xFF>")
    base = load_tokenizer(spec)
    if len(base) != len(proto.pieces):
        extra = sorted(set(base.get_vocab()) - {p.piece for p in proto.pieces})[:5]
        raise ValueError(f"tokenizer '{spec}': {len(base)} tokens but {path} has {len(proto.pieces)} pieces "
                         f"(tokens added on top, e.g. {extra}); new Tibetan ids would collide with them")
    vocab = base.get_vocab()
    moved = [p.piece for i, p in enumerate(proto.pieces) if vocab.get(p.piece) != i]
    if moved:
        raise ValueError(f"tokenizer '{spec}': {len(moved)} pieces of {path} have other ids in the HF tokenizer, "
                         f"e.g. {moved[:3]}")
    return base, proto, path


def training_lines(corpus: list[str | Path], limits: list[int | None], stats: Counter) -> Iterator[str]:
    """Normalised lines that hold Tibetan (a multi-line document gives one line per line); ``stats`` counts
    lines read, empty lines, lines without Tibetan and characters used."""
    for path, limit in zip(corpus, limits):
        for text in tqdm(iter_texts([path], limit=limit), desc=f"lines {Path(path).name}", unit=" lines", total=limit,
                         mininterval=5):
            stats["lines"] += 1
            for line in normalize(text).split("\n"):
                if not line:
                    stats["empty_lines"] += 1
                elif not _TIBETAN.search(line):
                    stats["lines_without_tibetan"] += 1
                else:
                    stats["tibetan_lines"] += 1
                    stats["chars"] += len(line)
                    yield line


def train_tibetan_model(lines: Iterable[str], vocab_size: int, piece_type: str, base_proto, threads: int = 1):
    """A SentencePiece model of ``piece_type`` with ``vocab_size`` pieces (fewer when the text has no more)
    trained on ``lines`` with the base model's normalisation and splitting settings."""
    import sentencepiece as spm

    if piece_type not in PIECE_TYPES:
        raise ValueError(f"piece type {piece_type!r}, expected one of {', '.join(PIECE_TYPES)}")
    norm, spec = base_proto.normalizer_spec, base_proto.trainer_spec
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type=piece_type, vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, byte_fallback=False, num_threads=threads,
        max_sentence_length=1 << 24,  # keep long documents: nothing is skipped silently
        normalization_rule_name=norm.name if norm.name in _BUILTIN_RULES else "identity",
        add_dummy_prefix=norm.add_dummy_prefix, remove_extra_whitespaces=norm.remove_extra_whitespaces,
        escape_whitespaces=norm.escape_whitespaces, treat_whitespace_as_suffix=spec.treat_whitespace_as_suffix,
        split_by_whitespace=spec.split_by_whitespace, split_by_unicode_script=spec.split_by_unicode_script,
        split_by_number=spec.split_by_number, split_digits=spec.split_digits,
        max_sentencepiece_length=spec.max_sentencepiece_length, minloglevel=2,
    )
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto


def select_new_pieces(base_proto, tibetan_proto, num_new: int) -> tuple[list[str], dict]:
    """At most ``num_new`` pieces of ``tibetan_proto`` to add, in score order, and why others were left out."""
    known = {p.piece for p in base_proto.pieces}
    ranked = sorted(((-p.score, i, p.piece) for i, p in enumerate(tibetan_proto.pieces) if p.type == NORMAL))
    counts = Counter()
    chars, longer = [], []
    for _, _, piece in ranked:
        if not _TIBETAN.search(piece):
            counts["not_tibetan"] += 1
        elif piece in known:
            counts["in_base"] += 1
        else:
            (chars if len(piece) == 1 else longer).append(piece)
    chosen = chars[:num_new]  # the characters the longer pieces are built from
    known.update(chosen)
    while longer and len(chosen) < num_new:  # BPE pieces pass once; a unigram piece's parts may come later
        left = []
        for piece in longer:
            if len(chosen) < num_new and any(piece[:k] in known and piece[k:] in known for k in range(1, len(piece))):
                chosen.append(piece)
                known.add(piece)
            else:
                left.append(piece)
        if len(left) == len(longer):
            break
        longer = left
    counts["unreachable"] = len(longer) if len(chosen) < num_new else 0
    order = {piece: k for k, (_, _, piece) in enumerate(ranked)}
    chosen.sort(key=order.__getitem__)
    return chosen, {"tibetan_model_pieces": len(ranked), **dict(counts), "new_pieces": len(chosen),
                    "new_characters": min(len(chars), num_new)}


def merge_pieces(base_proto, pieces: list[str]):
    """A copy of ``base_proto`` with ``pieces`` appended (normal pieces, scores below every base score)."""
    from sentencepiece import sentencepiece_model_pb2

    merged = sentencepiece_model_pb2.ModelProto()
    merged.CopyFrom(base_proto)
    lowest = min(p.score for p in base_proto.pieces)
    for k, text in enumerate(pieces):
        piece = merged.pieces.add()
        piece.piece, piece.score, piece.type = text, lowest - 1.0 - k, NORMAL
    merged.trainer_spec.vocab_size = len(merged.pieces)
    return merged


def extended_backend(base, merged_proto):
    """The base's fast tokenizer with the new pieces at their ids and their merges (from ``transformers``'
    SentencePiece converter, ranked by score) after the base merges."""
    from tokenizers import Tokenizer

    spec = json.loads(base.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"base fast tokenizer: model {spec['model']['type']}, expected BPE")
    converted = json.loads(fast_backend(merged_proto).to_str())["model"]
    vocab, n = spec["model"]["vocab"], len(base)
    new = {piece: i for piece, i in converted["vocab"].items() if i >= n}
    vocab.update(new)
    string_merges = bool(spec["model"]["merges"]) and isinstance(spec["model"]["merges"][0], str)
    for merge in converted["merges"]:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        if a + b in new:
            spec["model"]["merges"].append(f"{a} {b}" if string_merges else [a, b])
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def save_extended_sentencepiece(base, base_spec: str, base_proto, pieces: list[str], output: str | Path,
                                info: dict) -> dict:
    """Write the extended tokenizer directory (tokenizer.model, tokenizer.json, the base's config) and
    ``extension.json``; returns the extension description."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    merged = merge_pieces(base_proto, pieces)
    base.save_pretrained(output)
    (output / SENTENCEPIECE_FILE).write_bytes(merged.SerializeToString())
    extended_backend(base, merged).save(str(output / "tokenizer.json"))
    n = len(base)
    extension = {
        "base": portable_spec(base_spec),
        "base_kind": SENTENCEPIECE,
        "base_vocab_size": n,
        "num_new_tokens": len(pieces),
        "new_token_ids": [n, n + len(pieces)],  # [first, end) like range()
        "vocab_size": n + len(pieces),
        **info,
    }
    (output / EXTENSION_FILE).write_text(json.dumps(extension, indent=2, ensure_ascii=False) + "\n")
    return extension


def learn_sentencepiece_extension(base_spec: str, corpus: list[str | Path], num_new_tokens: int,
                                  max_lines_per_file: int | None | list[int | None] = None,
                                  piece_type: str = DEFAULT_PIECE_TYPE, threads: int = 1):
    """(base tokenizer, base ModelProto, Tibetan ModelProto, info) from a corpus; ``info`` has the corpus
    statistics, time and memory. Pick the pieces with :func:`select_new_pieces`. Unigram pieces are trained
    again on a larger vocabulary when too few of them are reachable, unless the corpus gave no more."""
    start = time.perf_counter()
    limits = line_limits(corpus, max_lines_per_file)
    base, base_proto, _ = sentencepiece_base(base_spec)
    if piece_type not in PIECE_TYPES:
        raise ValueError(f"piece type {piece_type!r}, expected one of {', '.join(PIECE_TYPES)}")
    vocab_size = int(num_new_tokens * _OVERSAMPLE[piece_type]) + 64
    while True:
        stats = Counter()
        try:
            tibetan = train_tibetan_model(training_lines(corpus, limits, stats), vocab_size, piece_type, base_proto,
                                          threads)
        except RuntimeError as error:
            if stats["tibetan_lines"]:
                raise
            raise ValueError(f"corpus {', '.join(map(str, corpus))}: no Tibetan text in {stats['lines']} lines "
                             f"({stats['lines_without_tibetan']} without Tibetan, {stats['empty_lines']} empty)") from error
        if not stats["tibetan_lines"]:  # the trainer may accept an empty input
            raise ValueError(f"corpus {', '.join(map(str, corpus))}: no Tibetan text in {stats['lines']} lines")
        found = len(select_new_pieces(base_proto, tibetan, num_new_tokens)[0])
        if found >= num_new_tokens or len(tibetan.pieces) < vocab_size:  # enough, or all the corpus holds
            break
        print(f"[extend] {found} of {len(tibetan.pieces)} {piece_type} pieces usable, {num_new_tokens} asked: "
              "training again on a larger vocabulary")
        vocab_size = int(vocab_size * num_new_tokens / max(found, 1) * 1.1)
    info = {
        "method": f"sentencepiece {piece_type} pieces merged into the base model",
        "piece_type": piece_type,
        "corpus": [str(p) for p in corpus],
        "max_lines_per_file": limits,
        "corpus_stats": dict(stats),
        "tibetan_model_vocab_size": len(tibetan.pieces),
        "seconds_training": round(time.perf_counter() - start, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    return base, base_proto, tibetan, info


def extend_sentencepiece(base_spec: str, corpus: list[str | Path], num_new_tokens: int, output: str | Path,
                         max_lines_per_file: int | None | list[int | None] = None,
                         piece_type: str = DEFAULT_PIECE_TYPE, threads: int = 1) -> dict:
    """Train ``num_new_tokens`` Tibetan pieces on ``corpus`` and save the extended tokenizer in ``output``."""
    base, base_proto, tibetan, info = learn_sentencepiece_extension(base_spec, corpus, num_new_tokens,
                                                                    max_lines_per_file, piece_type, threads)
    pieces, selection = select_new_pieces(base_proto, tibetan, num_new_tokens)
    if len(pieces) < num_new_tokens:
        print(f"[extend] {len(pieces)} new pieces, fewer than the {num_new_tokens} asked: the corpus yields no more "
              f"Tibetan {piece_type} pieces ({selection})")
    return save_extended_sentencepiece(base, base_spec, base_proto, pieces, output, {**info, "selection": selection})
