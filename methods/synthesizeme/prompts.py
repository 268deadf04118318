"""The harness's own SynthesizeMe prompts and their parsers.

Provenance: written for this harness. They follow the *roles* of the official prompts of
SALT-NLP/SynthesizeMe (``synthesizeme/utils/dspy_methods.py``: a chain-of-thought judge that
speculates 1–3 hypotheses about the judge, a persona-informed judge, and a persona synthesiser;
``synthesizeme/prompts/llama70b.json``: the persona synthesiser as an instruction plus worked
examples) but none of their text: the instructions, the answer format and the two worked persona
examples below are original. The official programs are rendered by DSPy's chat adapter (field
markers, demos as user/assistant turns); here the answer format is two labelled lines, which small
models follow more often, and demos are also user/assistant turns. Bump ``PROMPT_VERSION`` when a
prompt changes (it is part of every request, hence of the cache key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROMPT_VERSION = "1"
LABELS = ("First", "Second")

ANSWER_FORMAT = "Answer in exactly this form:\nReasoning: <your reasoning>\nPreference: <First or Second>"

JUDGE_INSTRUCTION = (
    "You predict which of two chatbot completions a particular human judge preferred. Read the "
    "conversation and both completions. Nothing is known about the judge yet, so make one to three "
    "guesses about the judge's tastes or persona, based on the conversation, the completions and "
    "anything the judge wrote, and reason with them. A wrong guess is fine: explore the "
    "possibilities.\n" + ANSWER_FORMAT
)

PERSONA_JUDGE_INSTRUCTION = (
    "You are a reward model personalised for one human judge. Predict which of two chatbot "
    "completions this judge preferred. Use the judge's persona below, earlier judgements if any "
    "are shown, and what the conversation reveals; think about what this particular judge will like.\n"
    "Persona of the judge:\n<<<\n{persona}\n>>>\n" + ANSWER_FORMAT
)

PERSONA_INSTRUCTION = (
    "You will read a person's past judgements. Each shows a conversation, two chatbot completions, "
    "the completion the person preferred and, sometimes, reasoning about that choice. Write a short "
    "persona of this person for a personalised reward model: what they value in answers (for "
    "example length, tone, formality, structure, level of detail) and what can fairly be inferred "
    "about who they are. Be concrete; do not claim what the judgements do not support.\n"
    "Answer in exactly this form:\nReasoning: <what the judgements have in common>\n"
    "Persona: <the persona, a few sentences>"
)

# Two worked examples, invented for this harness (the official program carries six, drawn from PRISM).
PERSONA_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "### Judgement 1\nConversation: [user]: How long should I boil pasta?\n"
        "First completion: 8 to 10 minutes; taste one at 8.\n"
        "Second completion: Great question! Pasta is a wonderful staple with a long history. Cooking "
        "time depends on the shape, the brand and your taste, so let's walk through it together...\n"
        "Preferred: First\n\n"
        "### Judgement 2\nConversation: [user]: Which documents do I need for a passport?\n"
        "First completion: There are several things worth considering, and it depends a lot on your "
        "situation, so here is some background first...\n"
        "Second completion: - Application form\n- Proof of citizenship\n- Photo ID\n- One passport photo\n"
        "Reasoning: The second completion lists exactly what is needed and nothing more.\n"
        "Preferred: Second",
        "Reasoning: Both times the person chose the completion that answered at once, briefly, without "
        "small talk; a plain list was welcome.\n"
        "Persona: A busy, practical person who wants the answer first and fast. Prefers short, "
        "skimmable replies (a number, a short list), dislikes enthusiasm, filler and background they "
        "did not ask for.",
    ),
    (
        "### Judgement 1\nConversation: [user]: I failed my driving test again.\n"
        "First completion: Many people need several attempts. Book the next test and practise the "
        "manoeuvres you missed.\n"
        "Second completion: I'm sorry, that is really discouraging. It is normal to feel upset, and "
        "needing more tries says nothing about your ability. When you feel ready, we could look at "
        "what went wrong together.\n"
        "Reasoning: The second reply acknowledges the feeling before giving advice.\n"
        "Preferred: Second\n\n"
        "### Judgement 2\nConversation: [user]: Can you explain how vaccines work?\n"
        "First completion: Vaccines show your immune system a harmless piece or copy of a germ, so it "
        "learns to recognise it; if the real germ arrives later, the body reacts quickly.\n"
        "Second completion: Vaccines work via antigen presentation eliciting adaptive immunity.\n"
        "Preferred: First",
        "Reasoning: The person favours warm, patient replies in everyday language, including "
        "emotional support when the topic is personal.\n"
        "Persona: Someone who values empathy and clear, friendly explanations. Likes to be "
        "acknowledged before being advised, prefers plain words to jargon, and appreciates a "
        "conversational, encouraging tone; probably not a specialist.",
    ),
)


@dataclass(frozen=True)
class Item:
    """One pair of one user, oriented: ``label`` is the preferred position (None when unknown)."""

    user: int
    conv: str
    first: str
    second: str
    label: str | None = None
    row: int = -1  # position in the user's support (train/val) list, -1 for test pairs


@dataclass(frozen=True)
class Demo:
    """A demonstration: a labelled item, with reasoning when it is a verified trace."""

    item: Item
    reasoning: str | None = None

    @property
    def augmented(self) -> bool:
        return self.reasoning is not None


def render_conversation(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"[{m['role']}]: {m['content']}" for m in messages)


def pair_message(item: Item) -> str:
    return (
        f"Conversation:\n{item.conv}\n\nFirst completion:\n{item.first}\n\n"
        f"Second completion:\n{item.second}\n\nWhich completion does the judge prefer?"
    )


def answer_text(reasoning: str | None, label: str) -> str:
    return f"Reasoning: {reasoning}\nPreference: {label}" if reasoning is not None else f"Preference: {label}"


def judge_messages(item: Item, persona: str | None, demos: list[Demo]) -> list[dict[str, str]]:
    system = JUDGE_INSTRUCTION if persona is None else PERSONA_JUDGE_INSTRUCTION.format(persona=persona.strip())
    msgs = [{"role": "system", "content": system}]
    for d in demos:
        msgs.append({"role": "user", "content": pair_message(d.item)})
        msgs.append({"role": "assistant", "content": answer_text(d.reasoning, d.item.label or "")})
    msgs.append({"role": "user", "content": pair_message(item)})
    return msgs


def format_history(demos: list[Demo]) -> str:
    blocks = []
    for i, d in enumerate(demos, 1):
        lines = [
            f"### Judgement {i}",
            f"Conversation: {d.item.conv}",
            f"First completion: {d.item.first}",
            f"Second completion: {d.item.second}",
        ]
        if d.reasoning is not None:
            lines.append(f"Reasoning: {d.reasoning}")
        lines.append(f"Preferred: {d.item.label}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def persona_messages(history: str, examples: int = len(PERSONA_EXAMPLES)) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": PERSONA_INSTRUCTION}]
    for hist, answer in PERSONA_EXAMPLES[:examples]:
        msgs.append({"role": "user", "content": f"Past judgements:\n{hist}"})
        msgs.append({"role": "assistant", "content": answer})
    msgs.append({"role": "user", "content": f"Past judgements:\n{history}"})
    return msgs


# ---------------------------------------------------------------------------- parsing

def field_regex(name: str) -> re.Pattern:
    """A line opening the field ``name``: ``Name:`` (markdown emphasis or heading marks allowed,
    e.g. ``**Name:**``) or DSPy's ``[[ ## name ## ]]`` marker; group 1 is the rest of the line."""
    return re.compile(
        rf"(?im)^(?:[ \t>*_#-]*{name}[ \t*_#]*[:：]|[ \t]*\[\[ *## *{name} *## *\]\])[ \t*_]*(.*)$"
    )


_PREF_LINE = field_regex("preference")
_PERSONA_LINE = field_regex("persona")
_REASONING_LINE = field_regex("reasoning")
_WORD = re.compile(r"\b(first|second)\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*(first|second)\W*$", re.IGNORECASE)


_CUE = re.compile(r"\b(prefer\w*|better|best|favou?r\w*|choos\w*|chose\w*|pick\w*|correct|more likely)\b", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\n]+")


def _lenient(text: str) -> str | None:
    """The first sentence that names exactly one of First/Second next to a preference cue
    ("The judge prefers the second completion.")."""
    for sent in _SENTENCE.findall(text):
        words = {w.lower() for w in _WORD.findall(sent)}
        if len(words) == 1 and _CUE.search(sent):
            return words.pop().capitalize()
    return None


def parse_preference(text: str, lenient: bool = False) -> str | None:
    """'First' or 'Second' from a judge's answer, or None when unparseable.

    Strict (default): the value is read from the last line starting with a ``Preference:`` field
    (markdown emphasis or DSPy's ``[[ ## preference ## ]]`` marker tolerated); if that line is
    empty the next non-empty line is used. The value must name exactly one of First/Second. A bare
    "First"/"Second" answer is also accepted. Anything else — no field, both words, neither — is
    unparseable. ``lenient`` (for small models that answer in prose) additionally accepts, when the
    strict reading fails, the first sentence naming exactly one of First/Second beside a
    preference cue (prefer, better, best, choose, correct, more likely …).
    """
    if not isinstance(text, str) or not text.strip():
        return None
    strict = _strict(text)
    if strict is None and lenient:
        return _lenient(text)
    return strict


def _strict(text: str) -> str | None:
    matches = list(_PREF_LINE.finditer(text))
    if not matches:
        m = _BARE.match(text.strip())
        return m.group(1).capitalize() if m else None
    last = matches[-1]
    value = last.group(1).strip()
    if not value:
        rest = text[last.end() :].strip().splitlines()
        value = rest[0] if rest else ""
    words = {w.lower() for w in _WORD.findall(value)}
    if len(words) != 1:
        return None
    return words.pop().capitalize()


def reasoning_of(text: str) -> str:
    """The reasoning part of a judge's answer: the text before its last Preference field, without
    a leading Reasoning label."""
    matches = list(_PREF_LINE.finditer(text))
    head = text[: matches[-1].start()] if matches else text
    m = _REASONING_LINE.match(head.strip())
    if m:
        head = m.group(1) + head.strip()[m.end() :]
    return head.strip() or "(no reasoning given)"


def parse_persona(text: str, lenient: bool = False) -> str | None:
    """The text after the last ``Persona:`` field (to the end), or None. ``lenient`` takes a
    non-empty answer without the field as the persona."""
    if not isinstance(text, str):
        return None
    matches = list(_PERSONA_LINE.finditer(text))
    if not matches:
        return text.strip() or None if lenient else None
    last = matches[-1]
    persona = (last.group(1) + text[last.end() :]).strip()
    return persona or None
