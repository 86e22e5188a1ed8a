"""The built-in task's gold labeler, simulated labelers, and the built-in preference set.

**The gold labeler** stands in for a person with a rule anyone can read. For a prompt x (a
speech and the header of the next speaker) and a reply y, with words = lower-cased runs of
letters and apostrophes:

    gold(x, y) = courtesy + relevance + length + repetition + form + fluency

    courtesy   = +1.0 per distinct civil word of address in y (CIVIL: "sir", "lord", "gentle",
                 "pray", "thanks", ...), at most 3 counted, − 1.5 per insult in y (INSULTS:
                 "knave", "villain", "fool", "rogue", ...), at most 3 counted
    relevance  = +0.5 per distinct content word (3+ letters, not in STOPWORDS) that y shares
                 with x, at most 2.0; −0.5 when y shares none (off-topic)
    length     = 0 when y has LENGTH_BAND = 8..40 words; −0.25 per word short of 8; −0.05 per
                 word beyond 40, at most −2.0
    repetition = −0.5 per repeat, at most −3.0: a word said again right after itself ("sir,
                 sir"), or a pair of words said again ("good lord, good lord")
    form       = −0.5 when y has words but does not end a sentence (".", "!", "?"): a reply
                 broken off mid-sentence
    fluency    = how natural y reads to a language model that never saw the task (the
                 pre-trained model): its mean log-probability per token of y after x, minus
                 that of the SFT policy's own replies, clipped to FLUENCY_RANGE = [−2.0, +0.5]
                 (−2.0 for an empty reply). It needs a model, so it is computed above this
                 module (rlfm/gold.py) and passed in; without a model it is 0.

So a polite, on-topic, well-formed reply of a sentence or two scores highest; an insulting,
empty, garbled or stuttering one lowest. A reply that games the courtesy term by saying "sir"
over and over loses more on repetition, length and form than it gains. The rule is what the
reward model must discover from noisy rankings alone, and what PPO's proxy reward is checked
against (Gao et al. 2023).

**Simulated labelers** (:class:`SimulatedLabeler`) see the gold score through noise and bias:

    s_i = gold(x, y_i) + length_bias · words(y_i) + noise · ε_i,   ε_i ~ N(0, 1)

and rank the K completions by s (higher is better; identical texts get one ε, so they tie).
:func:`default_labelers` makes a panel of three with different noise scales and length biases,
as real labelers differ. The gold scores they perceive are passed in when a model computes the
fluency term; otherwise they see the text rule (fluency 0).

**Rankings rows** (:func:`label_rows`): each prompt's replies ranked by a labeler of the panel
in turn, in the rankings format of data/preferences.py plus ``labeler`` and the ``gold``
scores, so the set can be read and checked. The replies themselves come from a policy
(rlfm/builtin_task.py samples them; this module knows no model).

Prompt layout (:func:`dialogue_prompt`): the SFT stage's (``data.sft.render_dialogue_prompt``),
the layout of the plays themselves, ``"<context speaker>.\\n<context>\\n\\n<reply speaker>.\\n"``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlfm.data.dialogue import DialoguePair, dialogue_pairs
from rlfm.data.preferences import levels_to_ranking
from rlfm.data.sft import render_dialogue_prompt
from rlfm.data.text import Document

_CIVIL_WORDS = (
    "sir sirs madam lord lords lady ladies gentle gentleman gentlemen gentlewoman noble good "
    "kind sweet dear friend friends pray prithee please beseech thank thanks thankful welcome "
    "grace honour honor worthy courteous master mistress"
)
CIVIL = frozenset(_CIVIL_WORDS.split())
"""Words of civil address and courtesy (+1 per distinct word, at most 3)."""
_INSULTS_WORDS = (
    "knave knaves villain villains fool fools foolish rogue rogues rascal rascals slave slaves "
    "wretch coward cowards cur curs dog dogs beast beasts idiot varlet varlets whoreson scurvy "
    "base vile damned devil monster toad hag peasant caitiff loggerhead canker"
)
INSULTS = frozenset(_INSULTS_WORDS.split())
"""Insults (−1.5 each, at most 3)."""
_STOPWORDS_WORDS = (
    "the and that this with for not you your yours are was were but have has had will would "
    "shall should what which who whom when where why how all any our ours their them they "
    "his her hers him she from there then than thou thee thy thine art hath doth dost did "
    "does let now come more well yet may might can must upon into out too very one here "
    "some such own nor its it's i'll i'm 'tis"
)
STOPWORDS = frozenset(_STOPWORDS_WORDS.split())
"""Function words that do not count as content for relevance."""
LENGTH_BAND = (8, 40)
"""Reply lengths (words) with no length penalty."""
FLUENCY_RANGE = (-2.0, 0.5)
"""The fluency term's floor and ceiling (nats per token relative to the SFT policy's replies)."""
GoldFn = Callable[[str, Sequence[str]], list[float]]
"""gold(prompt, completions) -> one gold score per completion."""

_WORD = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
    """Lower-cased words (letters and apostrophes, apostrophes trimmed at the ends)."""
    return [w.strip("'") for w in _WORD.findall(text.lower()) if w.strip("'")]


def content_words(text: str) -> set[str]:
    """Distinct words of 3+ letters that are not stopwords."""
    return {w for w in words(text) if len(w) >= 3 and w not in STOPWORDS}


@dataclass(frozen=True)
class GoldScore:
    """The gold rule's parts for one reply (see the module docstring)."""

    courtesy: float
    relevance: float
    length: float
    repetition: float = 0.0
    form: float = 0.0
    fluency: float = 0.0

    @property
    def total(self) -> float:
        return (
            self.courtesy + self.relevance + self.length + self.repetition + self.form
        ) + self.fluency


def repeats(w: Sequence[str]) -> int:
    """Words said again right after themselves, plus pairs of words said again: "sir, sir,
    sir" → 2 + 1 = 3; "good lord, good lord" → 0 + 1 = 1."""
    immediate = sum(1 for a, b in zip(w, w[1:]) if a == b)
    pairs = list(zip(w, w[1:]))
    return immediate + len(pairs) - len(set(pairs))


def gold_components(prompt: str, reply: str, fluency: float = 0.0) -> GoldScore:
    """The gold rule, part by part; ``fluency`` is the model-based term (rlfm/gold.py)."""
    w = words(reply)
    civil = len(set(w) & CIVIL)  # distinct: "sir, sir, sir" is one courtesy, not three
    insults = sum(1 for x in w if x in INSULTS)
    courtesy = 1.0 * min(civil, 3) - 1.5 * min(insults, 3)
    shared = len(content_words(reply) & content_words(prompt))
    relevance = min(0.5 * shared, 2.0) if shared else -0.5
    lo, hi = LENGTH_BAND
    n = len(w)
    if n < lo:
        length = -0.25 * (lo - n)
    elif n > hi:
        length = max(-0.05 * (n - hi), -2.0)
    else:
        length = 0.0
    r = repeats(w)
    repetition = -min(0.5 * r, 3.0) if r else 0.0
    form = -0.5 if w and not reply.rstrip(" \"')]").endswith((".", "!", "?")) else 0.0
    return GoldScore(courtesy, relevance, length, repetition, form, fluency)


def gold_score(prompt: str, reply: str, fluency: float = 0.0) -> float:
    """gold(x, y) = courtesy + relevance + length + repetition + form + fluency (module
    docstring); without a model the fluency term is 0."""
    return gold_components(prompt, reply, fluency).total


def text_gold(prompt: str, completions: Sequence[str]) -> list[float]:
    """The gold rule without the model-based fluency term (a :data:`GoldFn`)."""
    return [gold_score(prompt, c) for c in completions]


@dataclass(frozen=True)
class SimulatedLabeler:
    """A labeler who sees the gold score through noise and a length bias."""

    name: str
    """Written into each row it ranks."""
    noise: float = 0.5
    """Standard deviation of the Gaussian noise on each perceived score."""
    length_bias: float = 0.0
    """Added to the perceived score per word of the reply (> 0 likes long replies)."""

    def scores(
        self,
        prompt: str,
        completions: Sequence[str],
        rng: random.Random,
        gold: Sequence[float] | None = None,
    ) -> list[float]:
        """Perceived scores s_i (one noise draw per distinct text, so duplicates tie) of the
        completions whose gold scores are ``gold`` (default: the text rule, fluency 0)."""
        gold = text_gold(prompt, completions) if gold is None else gold
        eps: dict[str, float] = {}
        out = []
        for c, g in zip(completions, gold, strict=True):
            if c not in eps:
                eps[c] = rng.gauss(0.0, 1.0)
            s = g + self.length_bias * len(words(c))
            out.append(s + self.noise * eps[c])
        return out

    def rank(
        self,
        prompt: str,
        completions: Sequence[str],
        rng: random.Random,
        gold: Sequence[float] | None = None,
    ) -> list[int | list[int]]:
        """Indices best → worst; equal perceived scores are tied (an inner list)."""
        s = self.scores(prompt, completions, rng, gold)
        distinct = sorted(set(s), reverse=True)
        level = {v: i for i, v in enumerate(distinct)}
        return levels_to_ranking([level[v] for v in s])


def default_labelers(noise: float = 1.0) -> list[SimulatedLabeler]:
    """Three labelers: careful (0.5·noise), average (noise, likes long replies), hasty
    (1.5·noise, likes short replies)."""
    return [
        SimulatedLabeler("labeler-1", noise=0.5 * noise, length_bias=0.0),
        SimulatedLabeler("labeler-2", noise=1.0 * noise, length_bias=0.03),
        SimulatedLabeler("labeler-3", noise=1.5 * noise, length_bias=-0.03),
    ]


# ---------------------------------------------------------------------------- the built-in set


def dialogue_prompt(pair: DialoguePair) -> str:
    """The policy's prompt for a dialogue pair, exactly as the SFT stage writes it
    (``data.sft.render_dialogue_prompt``): ``"<context speaker>.\\n<context>\\n\\n<reply
    speaker>.\\n"``."""
    return render_dialogue_prompt(pair.context_speaker, pair.context, pair.reply_speaker)


def dialogue_prompts(docs: Sequence[Document], n: int, seed: int, max_words: int = 60) -> list[str]:
    """Up to ``n`` distinct prompts from the dialogue of ``docs``, drawn with ``seed``; contexts
    longer than ``max_words`` words are skipped (short prompts keep sampling cheap)."""
    seen: set[str] = set()
    prompts = []
    for doc in docs:
        for pair in dialogue_pairs(doc):
            p = dialogue_prompt(pair)
            if len(pair.context.split()) <= max_words and p not in seen:
                seen.add(p)
                prompts.append(p)
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


def clean_reply(text: str) -> str:
    """A sampled reply up to its first blank line, without surrounding whitespace; a NUL
    character (a byte-level tokenizer can sample one; no database stores it) becomes U+FFFD."""
    return text.split("\n\n", 1)[0].strip().replace("\x00", "\ufffd")


def label_rows(
    prompts: Sequence[str],
    replies: Sequence[Sequence[str]],
    labelers: Sequence[SimulatedLabeler],
    seed: int = 0,
    gold: GoldFn = text_gold,
) -> list[dict[str, Any]]:
    """Rankings rows: each prompt's replies ranked by one labeler (in turn), with their
    ``gold`` scores.

    Prompts whose replies are all identical (nothing to compare) are left out.
    """
    rng = random.Random(seed)
    rows = []
    for j, (prompt, comps) in enumerate(zip(prompts, replies)):
        if len(set(comps)) < 2:
            continue
        labeler = labelers[j % len(labelers)]
        g = gold(prompt, comps)
        rows.append(
            {
                "prompt": prompt,
                "completions": list(comps),
                "ranking": labeler.rank(prompt, comps, rng, g),
                "labeler": labeler.name,
                "gold": [round(x, 4) for x in g],
            }
        )
    return rows
