"""The gold labeler's rule by hand, simulated labelers, and the built-in preference set."""

from __future__ import annotations

import random

from rlfm.data.labelers import (
    SimulatedLabeler,
    clean_reply,
    default_labelers,
    gold_components,
    gold_score,
    repeats,
    words,
)

PROMPT = "Romeo.\nWhere is my gentle lady Juliet tonight?\n\nNurse.\n"
POLITE = "Good my lord, I pray you, your lady Juliet sleeps in her chamber."
RUDE = "Away, thou knave and villain!"


def test_gold_rule_by_hand():
    """POLITE: 13 words (in the 8..40 band: 0), civil words good/lord/pray/lady = 4, capped at
    3 → +3.0, shares 'lady' and 'juliet' with the prompt → +1.0, no repeat, ends a sentence:
    total 4.0. RUDE: 5 words → −0.25·3 = −0.75, insults knave/villain → −3.0, nothing shared →
    −0.5 (off-topic): total −4.25. The empty reply: −0.25·8 = −2.0, off-topic −0.5."""
    p = gold_components(PROMPT, POLITE)
    assert (p.courtesy, p.relevance, p.length, p.repetition, p.form) == (3.0, 1.0, 0.0, 0.0, 0.0)
    assert p.total == 4.0
    r = gold_components(PROMPT, RUDE)
    assert (r.courtesy, r.relevance, r.length) == (-3.0, -0.5, -0.75)
    assert gold_score(PROMPT, RUDE) == -4.25
    assert gold_score(PROMPT, "") == -2.5
    long_reply = " ".join(["lady"] + ["word"] * 79) + "."  # 80 words: 40 over → −2.0 (the cap)
    assert gold_components(PROMPT, long_reply).length == -2.0
    # civil words count once each: 'sir' ×3 → +1; 'good', 'sir', 'lord' → +3 (4 words: −1.0)
    assert gold_components(PROMPT, "Ay, sir, sir, sir.").courtesy == 1.0
    assert gold_score(PROMPT, "Good sir, my lord.") == 3.0 - 1.0 - 0.5
    # the fluency term is passed in (rlfm/gold.py computes it with a model) and adds up
    assert gold_score(PROMPT, POLITE, fluency=-1.25) == 4.0 - 1.25


def test_repetition_and_form_penalise_a_degenerate_reply():
    """ "Ay, sir, sir, sir, sir." repeats 'sir' right after itself 3 times and the pair
    (sir, sir) 2 more times: 5 repeats → −2.5; "Good lord, good lord, good lord" repeats the
    pair (good, lord) twice and (lord, good) once: −1.5, and it breaks off without ending a
    sentence: −0.5. A reply of 7 such repeats is capped at −3.0."""
    assert repeats(words("Ay, sir, sir, sir, sir.")) == 5
    stutter = gold_components(PROMPT, "Ay, sir, sir, sir, sir.")
    assert (stutter.repetition, stutter.form) == (-2.5, 0.0)
    loop = gold_components(PROMPT, "Good lord, good lord, good lord")
    assert (loop.repetition, loop.form) == (-1.5, -0.5)
    assert gold_components(PROMPT, "sir " * 9).repetition == -3.0
    # an ordinary sentence repeats nothing; a courteous reply still outscores the stutter
    assert repeats(words(POLITE)) == 0
    assert gold_score(PROMPT, POLITE) > gold_score(PROMPT, "Ay, sir, sir, sir, sir.") + 5


def test_noiseless_labeler_ranks_by_gold_and_ties_duplicates():
    """With no noise and no bias the ranking is the gold order (POLITE, empty, RUDE), two
    identical replies are tied (an inner list), and gold scores passed in are what counts."""
    lab = SimulatedLabeler("exact", noise=0.0)
    rng = random.Random(0)
    assert lab.rank(PROMPT, [POLITE, RUDE, ""], rng) == [0, 2, 1]
    assert lab.rank(PROMPT, [RUDE, POLITE, RUDE], rng) == [1, [0, 2]]
    # given gold scores (a model's fluency included), the labeler perceives those instead
    assert lab.rank(PROMPT, [POLITE, RUDE, ""], rng, gold=[0.0, 5.0, 1.0]) == [1, 2, 0]


def test_length_bias_and_noise_change_the_rankings():
    """Two replies with equal gold scores: a labeler with length_bias > 0 prefers the longer
    one, < 0 the shorter. Over 300 rankings of 4 replies, agreement with the gold order falls
    as the noise grows (0.3 → 3.0)."""
    short = "the moon is bright tonight over the garden wall"  # 9 words, gold 0
    long = "the moon is bright tonight over the garden wall and the sea"  # 12 words, gold 0
    assert gold_score(PROMPT, short) == gold_score(PROMPT, long)
    rng = random.Random(0)
    assert SimulatedLabeler("long", 0.0, 0.1).rank(PROMPT, [short, long], rng) == [1, 0]
    assert SimulatedLabeler("short", 0.0, -0.1).rank(PROMPT, [short, long], rng) == [0, 1]

    pool = [POLITE, RUDE, "", short, "Good sir, thanks.", "Fie, you scurvy rogue, go hang."]

    def agreement(noise: float) -> float:
        lab, rng, hits, total = SimulatedLabeler("x", noise), random.Random(1), 0, 0
        for _ in range(300):
            comps = rng.sample(pool, 4)
            gold = [gold_score(PROMPT, c) for c in comps]
            order = [
                i
                for item in lab.rank(PROMPT, comps, rng)
                for i in ([item] if isinstance(item, int) else item)
            ]
            for a in range(4):
                for b in range(a + 1, 4):
                    if gold[order[a]] != gold[order[b]]:
                        total += 1
                        hits += gold[order[a]] > gold[order[b]]
        return hits / total

    low, high = agreement(0.3), agreement(3.0)
    assert low > 0.95 and high < low - 0.1, (low, high)
    assert [lab.noise for lab in default_labelers(2.0)] == [1.0, 2.0, 3.0]


def test_clean_reply_stops_at_a_blank_line():
    """A sampled reply ends at its first blank line (the next speech), stripped."""
    assert clean_reply(" I thank you.\nFarewell.\n\nRomeo.\nStay!") == "I thank you.\nFarewell."
    assert clean_reply("Ay\x00me.") == "Ay\ufffdme."  # no database stores a NUL
