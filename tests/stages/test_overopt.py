"""`rlfm overopt`'s proxy sizes against the runs it studies (the command itself runs in
tests/test_pipeline.py, on the micro pipeline)."""

from __future__ import annotations

import math

from rlfm import pipeline
from rlfm.stages import labels, overopt, reward


def test_the_proxy_sizes_fit_a_batch_and_the_runs_labels():
    """Each proxy of --quick holds at least one reward-model batch of rankings, and the largest
    fits in a --quick pipeline's training rankings; the default's largest fits in the default
    pipeline's (a ranking of K replies holds C(K, 2) comparisons)."""
    per_ranking = math.comb(labels.Config().k, 2)
    batch = reward.Config().batch_size
    quick = overopt.effective(overopt.Config(quick=True)).sizes
    assert min(quick) >= batch * per_ranking
    assert max(quick) <= pipeline.QUICK["labels"]["num_prompts"] * per_ranking
    default = overopt.Config().sizes
    assert min(default) >= batch * per_ranking
    assert max(default) <= labels.Config().num_prompts * per_ranking
