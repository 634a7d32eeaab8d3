"""Translation prompts: the one place that says how a translation request is phrased.

Supervised fine-tuning draws one phrasing per pair (:func:`draw_phrasing`, a hash of the seed and the
pair, so the draw does not depend on input order); evaluation (``tools/evaluate.py --translate``)
always prompts with the first phrasing of the direction, so a fine-tuned model is scored on a prompt it
was trained with. The first English phrasing is the evaluation prompt the project has used from the
start, so earlier evaluation figures stay comparable.

Phrasings per direction: seven in English, and seven in Chinese where Chinese is one of the two
languages (the study used seven Chinese and seven English templates). The reverse directions
(bo→zh, bo→en) are phrased in English and, for bo→zh, in Chinese: Tibetan phrasings are left to a
Tibetan speaker to write and vet here. ``{text}`` is the source text; ``{source}``/``{target}`` the
language names in the phrasing's own language.
"""

from __future__ import annotations

import hashlib
import string

LANGUAGES = {"zh": "Chinese", "en": "English", "bo": "Tibetan"}
_NAMES_ZH = {"zh": "中文", "en": "英文", "bo": "藏文"}

_ENGLISH = (
    "Translate the following {source} text into {target}. Reply with the translation only.\n\n{text}",
    "Translate this {source} sentence into {target}:\n\n{text}",
    "What is the {target} translation of the following {source} text?\n\n{text}",
    "{source}: {text}\n{target}:",
    "Please render the following text in {target}.\n\n{text}",
    "Translate from {source} to {target}.\n\n{text}",
    "{text}\n\nTranslate the text above into {target}.",
)
_CHINESE = (
    "请将下面的{source}翻译成{target}，只输出译文。\n\n{text}",
    "把这段{source}翻译成{target}：\n\n{text}",
    "下面这段{source}用{target}怎么说？\n\n{text}",
    "{source}：{text}\n{target}：",
    "请把以下文字译为{target}。\n\n{text}",
    "将{source}译成{target}。\n\n{text}",
    "{text}\n\n请将上面的文字翻译成{target}。",
)


def _fill(templates: tuple[str, ...], names: dict[str, str], source: str, target: str) -> tuple[str, ...]:
    # language names filled in now; {text} stays for the source text
    return tuple(t.format(source=names[source], target=names[target], text="{text}") for t in templates)


PHRASINGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("zh", "bo"): _fill(_ENGLISH, LANGUAGES, "zh", "bo") + _fill(_CHINESE, _NAMES_ZH, "zh", "bo"),
    ("en", "bo"): _fill(_ENGLISH, LANGUAGES, "en", "bo"),
    ("bo", "zh"): _fill(_ENGLISH, LANGUAGES, "bo", "zh") + _fill(_CHINESE, _NAMES_ZH, "bo", "zh"),
    ("bo", "en"): _fill(_ENGLISH, LANGUAGES, "bo", "en"),
}


def _check(phrasing: str) -> None:
    fields = [f for _, f, _, _ in string.Formatter().parse(phrasing) if f is not None]
    if fields != ["text"]:
        raise ValueError(f"prompt phrasing {phrasing!r} must have exactly one {{text}} field, has {fields}")


for _phrasings in PHRASINGS.values():
    for _p in _phrasings:
        _check(_p)


def phrasings(source: str, target: str) -> tuple[str, ...]:
    """The phrasings of ``source``→``target`` (language codes), each with one ``{text}`` field."""
    for lang in (source, target):
        if lang not in LANGUAGES:
            raise ValueError(f"unknown language code {lang!r}; known: {', '.join(LANGUAGES)}")
    try:
        return PHRASINGS[(source, target)]
    except KeyError:
        known = ", ".join(f"{s}→{t}" for s, t in PHRASINGS)
        raise ValueError(f"no prompt phrasings for {source}→{target}; directions: {known}") from None


def translation_prompt(text: str, source: str, target: str = "bo", index: int = 0) -> str:
    """The request to translate ``text`` from ``source`` into ``target`` in phrasing ``index``
    (0: the evaluation prompt)."""
    return phrasings(source, target)[index].format(text=text)


def translation_messages(text: str, source: str, target: str = "bo", index: int = 0,
                         answer: str | None = None) -> list[dict]:
    """The conversation that asks for ``text`` in phrasing ``index``: a user turn, and the assistant's
    ``answer`` when given. SFT data trains on it with the answer; evaluation renders it without, with the
    generation prompt, so the prompt a model is scored on is the one it was trained on."""
    messages = [{"role": "user", "content": translation_prompt(text, source, target, index)}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def draw_phrasing(source: str, target: str, seed: int, key: str) -> int:
    """A phrasing index for the pair identified by ``key`` (e.g. its source and target text): uniform
    over the direction's phrasings, fixed by ``seed`` and ``key`` alone."""
    digest = hashlib.blake2b(f"{seed}\0{source}-{target}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % len(phrasings(source, target))
