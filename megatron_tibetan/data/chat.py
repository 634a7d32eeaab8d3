"""Chat rendering and the answer-only loss mask, located from the rendered turns' character spans.

A conversation ``m[0..n]`` (roles ``system``, ``user``, ``assistant``) is rendered with the model's own
chat template (``tokenizer.apply_chat_template``), with :data:`PLAIN_TEMPLATE` for a base model
without one, or with a Jinja template given explicitly (``chat_template``, e.g. an instruct model's
template for its base model). The loss mask never looks at template markup. For each trained assistant turn ``i``:

- ``before = render(m[:i], add_generation_prompt=True)``: the prompt a model is given at inference;
- ``through = render(m[:i+1])``: the conversation up to and including turn ``i``;
- the whole rendering must start with both (the template renders incrementally), ``m[i]``'s content
  must follow ``before`` verbatim, and ``through`` must continue after the content with an end-of-turn
  token (``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``, ``<end_of_turn>``, ``<|endoftext|>`` or the
  tokenizer's eos, whichever is in the vocabulary and comes next).

The trained character span of the turn is its content plus that end-of-turn token. Whatever the
template adds (a default system prompt such as Qwen2.5's or SmolLM2's, role headers, newlines) lies
outside every span. The rendered text is tokenised once with the fast tokenizer's offsets, and a token
is trained exactly when its characters lie inside a trained span. Should a token straddle a span edge
(a merge across the boundary, e.g. content starting with newlines after the template's newline), the
text is instead tokenised piece by piece, cut at the span edges, so no token mixes trained and
untrained characters (``Encoded.retokenized``; counted by the caller). Tokens after the last trained
token are dropped: they would never be a target.

Errors (:class:`ChatTemplateError`, the caller adds file and line): a template that raises, one that
does not render incrementally or alters the assistant content, or one that ends an assistant turn
without an end-of-turn token. :class:`SpecialTokenError`: a message holds a special token's text
(``<|im_end|>`` ...), which would be read as template markup; callers count it as a skipped record.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from megatron_tibetan.text.readers import InputError

ROLES = ("system", "user", "assistant")
# end-of-turn tokens of common chat templates (ChatML, Llama 3, Phi, Gemma); the eos token is added
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")

# For base models without a chat template: Alpaca-style headers, each answer closed by the eos token.
PLAIN_TEMPLATE = (
    "{%- if bos_token %}{{ bos_token }}{% endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\n' }}{%- endif -%}"
)
TEMPLATES = ("auto", "model", "plain")  # auto: the model's own if it has one, else plain
TRAIN_ON = ("all", "last")  # every assistant turn, or only the last one


def load_chat_template(path: str | Path) -> str:
    """The text of a Jinja chat template file, compiled once here so that a syntax error names the
    template file and its line (not the first conversation rendered with it)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    import jinja2

    text = Path(path).read_text(encoding="utf-8")
    try:
        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as error:
        raise InputError(f"{path}:{error.lineno}: chat template syntax error: {error.message}") from None
    return text


class ChatTemplateError(ValueError):
    """The chat template cannot render this conversation in a way the loss mask can be located in."""


class SpecialTokenError(ValueError):
    """A message's text contains a special token's text."""


class Encoded(NamedTuple):
    ids: np.ndarray  # int64 token ids of the rendered conversation, up to the last trained token
    target: np.ndarray  # bool per token: trained (assistant content or its end-of-turn token)
    text: str  # the whole rendered conversation
    spans: list[tuple[int, int]]  # trained character spans [start, end) of ``text``
    retokenized: bool  # tokenised piece by piece because a token straddled a span edge


class ChatEncoder:
    """Renders and tokenises conversations with ``tokenizer`` (a fast HF tokenizer)."""

    def __init__(self, tokenizer, template: str = "auto", train_on: str = "all", chat_template: str | None = None):
        if chat_template is not None:
            template = "custom"
        elif template not in TEMPLATES:
            raise ValueError(f"template {template!r}: expected one of {', '.join(TEMPLATES)}")
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on {train_on!r}: expected one of {', '.join(TRAIN_ON)}")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer (character offsets are needed)")
        if template == "auto":
            template = "model" if tokenizer.chat_template else "plain"
        if template == "model" and not tokenizer.chat_template:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat template (use template 'plain')")
        if template == "plain" and tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos token to end the plain template's answers")
        self.tokenizer = tokenizer
        self.template = template
        self.train_on = train_on
        self._chat_template = {"plain": PLAIN_TEMPLATE, "custom": chat_template}.get(template)
        vocab = tokenizer.get_vocab()
        candidates = [t for t in (*END_OF_TURN, tokenizer.eos_token) if t is not None and t in vocab]
        self.end_of_turn = list(dict.fromkeys(candidates))
        self.special_tokens = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special})

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                list(messages), chat_template=self._chat_template, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as error:  # jinja errors, raise_exception() in templates, transformers' own checks
            raise ChatTemplateError(f"the chat template cannot render {len(messages)} message(s): {error}") from None

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """The tokens a model is given to answer after ``messages``: their rendering with the generation
        prompt, tokenised as :meth:`encode` tokenises a conversation (the prompt of a trained turn)."""
        return self.tokenizer(self.render(messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]

    def check(self, messages: Sequence[dict]) -> None:
        """Roles and contents are well formed and hold no special token text (else raises)."""
        if not messages:
            raise ChatTemplateError("no messages")
        for k, m in enumerate(messages):
            if m["role"] not in ROLES:
                raise ChatTemplateError(f"messages[{k}]: unknown role {m['role']!r} (expected {', '.join(ROLES)})")
            for token in self.special_tokens:
                if token in m["content"]:
                    raise SpecialTokenError(f"messages[{k}] ({m['role']}) contains the special token {token!r}")
        if not any(m["role"] == "assistant" for m in messages):
            raise ChatTemplateError("no assistant turn")
        if messages[0]["role"] == "assistant":
            raise ChatTemplateError("messages[0] is an assistant turn: a conversation starts with a system or user message")

    def spans(self, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans to train (content + end-of-turn token)."""
        self.check(messages)
        text = self.render(messages)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if self.train_on == "last":
            turns = turns[-1:]
        spans = []
        for i in turns:
            before = self.render(messages[:i], add_generation_prompt=True)
            if not text.startswith(before):
                raise ChatTemplateError(
                    f"messages[{i}]: the rendering of the messages before it with the generation prompt is not a "
                    f"prefix of the whole conversation (the template does not render incrementally)"
                )
            content = messages[i]["content"]
            start, end = len(before), len(before) + len(content)
            if text[start:end] != content:
                raise ChatTemplateError(
                    f"messages[{i}]: the template does not place the assistant content verbatim after the generation "
                    f"prompt (found {text[start:start + 40]!r})"
                )
            through = self.render(messages[: i + 1])
            if not text.startswith(through) or len(through) <= end:
                raise ChatTemplateError(f"messages[{i}]: the conversation up to this turn is not a prefix of the whole")
            eot = next((t for t in self.end_of_turn if through.startswith(t, end)), None)
            if eot is None:
                raise ChatTemplateError(
                    f"messages[{i}]: the template ends the assistant turn with {through[end:end + 20]!r}, not an "
                    f"end-of-turn token ({', '.join(self.end_of_turn) or 'none in the vocabulary'})"
                )
            spans.append((start, end + len(eot)))
        return text, spans

    def encode(self, messages: Sequence[dict]) -> Encoded:
        """One conversation; raises what :meth:`encode_many` would return in its place."""
        result = self.encode_many([messages])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def encode_many(self, conversations: Sequence[Sequence[dict]]) -> list:
        """One :class:`Encoded` per conversation, or the exception that conversation raised (in place,
        so the caller can name its file and line). Tokenises in one batch."""
        rendered: list = []
        for messages in conversations:
            try:
                rendered.append(self.spans(messages))
            except (ChatTemplateError, SpecialTokenError) as error:
                rendered.append(error)
        good = [r for r in rendered if not isinstance(r, Exception)]
        batch = self.tokenizer([t for t, _ in good], add_special_tokens=False, return_offsets_mapping=True) if good else None
        out, k = [], 0
        for r in rendered:
            if isinstance(r, Exception):
                out.append(r)
                continue
            ids, offsets = batch["input_ids"][k], batch["offset_mapping"][k]
            k += 1
            out.append(self._mask(r[0], r[1], ids, offsets))
        return out

    def _mask(self, text: str, spans: list[tuple[int, int]], ids: list[int], offsets: list) -> Encoded:
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        s, e = offsets[:, 0], offsets[:, 1]
        target = np.zeros(len(ids), dtype=bool)
        straddles = False
        for a, b in spans:
            inside = (a <= s) & (e <= b) & (s < e)
            target |= inside
            straddles |= bool(((s < b) & (a < e) & ~inside).any())  # overlaps the span without lying inside
        if straddles:
            ids, target = self._piecewise(text, spans)
        else:
            ids = np.asarray(ids, dtype=np.int64)
        if not target.any():
            raise ChatTemplateError("no token lies inside an assistant span")  # pragma: no cover - spans are non-empty
        last = int(np.flatnonzero(target)[-1])
        return Encoded(ids[: last + 1], target[: last + 1], text, spans, straddles)

    def _piecewise(self, text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        cuts = sorted({0, len(text), *(x for span in spans for x in span)})
        pieces = [(a, b) for a, b in zip(cuts, cuts[1:]) if a < b]
        encoded = self.tokenizer([text[a:b] for a, b in pieces], add_special_tokens=False)["input_ids"]
        ids, target = [], []
        for (a, b), piece in zip(pieces, encoded):
            inside = any(s <= a and b <= e for s, e in spans)
            ids += piece
            target += [inside] * len(piece)
        return np.asarray(ids, dtype=np.int64), np.asarray(target, dtype=bool)
