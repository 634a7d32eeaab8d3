"""SentencePiece model files (``tokenizer.model``): read the ``ModelProto``, and build the matching fast
(``tokenizers``) tokenizer with ``transformers``' SentencePiece converter, the same conversion
``AutoTokenizer`` applies to a directory that holds only a ``tokenizer.model``."""

from __future__ import annotations

from pathlib import Path

SENTENCEPIECE_FILE = "tokenizer.model"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # ModelProto.SentencePiece.Type
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # TrainerSpec.ModelType


def read_model_proto(path: str | Path):
    """The ``sentencepiece_model_pb2.ModelProto`` of a SentencePiece model file; ValueError (naming the
    file) when it is not one."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except DecodeError as error:
        raise ValueError(f"{path}: not a SentencePiece model ({error})") from None
    if not proto.pieces or not proto.HasField("trainer_spec"):
        raise ValueError(f"{path}: not a SentencePiece model (no pieces or no trainer spec)")
    return proto


def is_sentencepiece_model(path: str | Path) -> bool:
    try:
        read_model_proto(path)
    except ValueError:
        return False
    return True


def model_type(proto) -> str:
    return MODEL_TYPES.get(proto.trainer_spec.model_type, str(proto.trainer_spec.model_type))


def fast_backend(proto):
    """A ``tokenizers.Tokenizer`` that encodes like ``SentencePieceProcessor`` on ``proto`` (BPE merges
    ranked by piece score, the model's normalizer, dummy prefix and byte fallback)."""
    from transformers.convert_slow_tokenizer import SpmConverter

    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    if len(vocab) != len(proto.pieces):
        raise ValueError("SentencePiece model: duplicate pieces")
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if backend is None:
        raise ValueError(f"SentencePiece model of type {model_type(proto)}: no fast conversion")
    return backend


def special_tokens(proto) -> dict[str, str]:
    """unk/bos/eos/pad token keyword arguments from the trainer spec (ids < 0 mean absent)."""
    spec = proto.trainer_spec
    named = {"unk_token": (spec.unk_id, spec.unk_piece), "bos_token": (spec.bos_id, spec.bos_piece),
             "eos_token": (spec.eos_id, spec.eos_piece), "pad_token": (spec.pad_id, spec.pad_piece)}
    return {key: proto.pieces[i].piece for key, (i, _) in named.items() if 0 <= i < len(proto.pieces)}


def train_llama2_like(lines, path: str | Path, vocab_size: int = 32000, threads: int = 1):
    """Train a SentencePiece model with Llama 2's settings (BPE, byte fallback, digits split, no
    normalisation, whitespace kept) on ``lines`` and write it to ``path``; returns its ModelProto. A stand-in
    for a real Llama-2-family tokenizer where none is at hand (fewer pieces when the text has no more)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, hard_vocab_limit=False,
        model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=0.99995,
        max_sentencepiece_length=16, max_sentence_length=1 << 24, num_threads=threads, minloglevel=2,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(model.getvalue())
    return read_model_proto(path)


def hf_tokenizer(proto):
    """A ``transformers`` fast tokenizer for a bare SentencePiece model (no HF config: no BOS is added)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=fast_backend(proto), clean_up_tokenization_spaces=False,
                                   **special_tokens(proto))
