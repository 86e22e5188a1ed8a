"""Agreement between labelers, and aggregation of several rankings into one. Pure math: lists
of numbers in, numbers out (no database). A statistic that is undefined for its data (no pairs,
no variation) is None, never a made-up number.

A ranking of K outputs is given as **levels** (``levels[i]`` = the level of output i, 0 = best;
equal levels are ties), as ``data.preferences.ranking_levels`` returns.

- :func:`comparisons`: a ranking as its C(K,2) pairwise outcomes, ``+1`` (i before j), ``0``
  (tie), ``−1`` (j before i), for i < j.
- :func:`pairwise_agreement`: the share of output pairs two labelers order the same way
  (InstructGPT's inter-labeler agreement, "72.6 ± 1.5%" for its training labelers).
- :func:`cohen_kappa`: κ = 1 − Σ w_ck O_ck / Σ w_ck E_ck (Cohen 1960, 1968): O the observed
  proportions of (a, b) category pairs, E = outer product of the marginals, w = 0/1 (nominal),
  |c−k| (linear) or (c−k)² (quadratic) by category index. Unweighted κ = (p_o − p_e)/(1 − p_e).
- :func:`fleiss_kappa`: κ = (P̄ − P̄_e)/(1 − P̄_e) with P_u = (Σ_c n_uc² − n_u)/(n_u(n_u − 1)),
  P̄ their mean, p_c = Σ_u n_uc / Σ_u n_u, P̄_e = Σ_c p_c² (Fleiss 1971; units may have
  different numbers of raters ≥ 2, which for a constant number is exactly Fleiss' κ).
- :func:`krippendorff_alpha`: α = 1 − D_o/D_e, from the coincidence matrix
  o_ck = Σ_u (pairs (c, k) of values in unit u)/(m_u − 1), n_c = Σ_k o_ck, n = Σ_c n_c;
  D_o = Σ o_ck δ²_ck / n, D_e = Σ n_c n_k δ²_ck / (n(n − 1)); δ² nominal: [c ≠ k]; ordinal:
  (Σ_{g=c..k} n_g − (n_c + n_k)/2)²; interval: (c − k)² (Krippendorff 2011). Missing values are
  None; units with fewer than two values are left out.
- :func:`kendall_tau`: τ_b = (n_c − n_d)/√((n_0 − n_1)(n_0 − n_2)) (Kendall 1945): n_c, n_d
  concordant and discordant pairs, n_0 = n(n−1)/2, n_1, n_2 the pairs tied in each ranking.
- :func:`ranked_pairs`: Tideman's (1987) ranked pairs: the majority margin m_ij = #(i ahead of
  j) − #(j ahead of i); pairs with m > 0 are locked in from the largest margin down, skipping
  any that would close a cycle; the result orders outputs by the locked-in graph (outputs it
  leaves unordered tie).
- :func:`bradley_terry`: strengths p maximising Π (p_i/(p_i + p_j))^{w_ij} over all
  comparisons (Bradley & Terry 1952; a tie counts half a win each way), by Hunter's (2004) MM
  update p_i ← W_i / Σ_j n_ij/(p_i + p_j), with ``prior`` virtual half-wins each way per pair so
  the estimate exists when an output always wins. Returns log-strengths, mean 0.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from itertools import combinations
from typing import Literal

Weights = Literal["nominal", "linear", "quadratic"]
Level = Literal["nominal", "ordinal", "interval"]


def comparisons(levels: Sequence[int]) -> list[int]:
    """The C(K,2) pairwise outcomes of a ranking, pairs (i, j) with i < j in order:
    +1 when i is ranked ahead of j, −1 when behind, 0 for a tie."""
    return [
        (levels[j] > levels[i]) - (levels[j] < levels[i])
        for i, j in combinations(range(len(levels)), 2)
    ]


def pairwise_agreement(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    """(agreeing pairs, pairs) of two rankings of the same K outputs (levels): a pair agrees
    when both order it the same way or both tie it."""
    if len(a) != len(b):
        raise ValueError(f"rankings of different lengths: {len(a)} and {len(b)}")
    ca, cb = comparisons(a), comparisons(b)
    return sum(x == y for x, y in zip(ca, cb)), len(ca)


def cohen_kappa(
    a: Sequence[Hashable],
    b: Sequence[Hashable],
    weights: Weights = "nominal",
    labels: Sequence[Hashable] | None = None,
) -> float | None:
    """Cohen's κ of two raters' labels of the same units (weighted: by category index in
    ``labels``, default the sorted categories seen). None when undefined (no units, or both
    raters always give one and the same category)."""
    if len(a) != len(b):
        raise ValueError(f"label lists of different lengths: {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    cats = list(labels) if labels is not None else sorted(set(a) | set(b))  # type: ignore[type-var]
    index = {c: i for i, c in enumerate(cats)}
    m = len(cats)
    observed = [[0.0] * m for _ in range(m)]
    for x, y in zip(a, b):
        observed[index[x]][index[y]] += 1.0 / n
    row = [sum(r) for r in observed]
    col = [sum(observed[i][j] for i in range(m)) for j in range(m)]

    def w(i: int, j: int) -> float:
        if weights == "nominal":
            return float(i != j)
        if weights == "linear":
            return float(abs(i - j))
        return float((i - j) ** 2)

    num = sum(w(i, j) * observed[i][j] for i in range(m) for j in range(m))
    den = sum(w(i, j) * row[i] * col[j] for i in range(m) for j in range(m))
    if den == 0:
        return None
    return 1.0 - num / den


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' κ of a units × categories table of counts (how many raters put unit u in
    category c). Units rated by fewer than two raters are left out; None when undefined."""
    rows = [list(r) for r in counts if sum(r) >= 2]
    if not rows:
        return None
    total = sum(sum(r) for r in rows)
    p_unit = [(sum(x * x for x in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows]
    p_bar = sum(p_unit) / len(rows)
    m = len(rows[0])
    p_cat = [sum(r[c] for r in rows) / total for c in range(m)]
    p_e = sum(p * p for p in p_cat)
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha(
    data: Sequence[Sequence[float | None]], level: Level = "nominal"
) -> float | None:
    """Krippendorff's α of a raters × units table (None = not rated). Values are numbers
    (ordinal: their order matters, interval: their differences). None when undefined (fewer
    than two pairable values, or no variation at all)."""
    if not data:
        return None
    n_units = len(data[0])
    if any(len(r) != n_units for r in data):
        raise ValueError("every rater's row must have one entry per unit")
    values = sorted({v for r in data for v in r if v is not None})
    index = {v: i for i, v in enumerate(values)}
    m = len(values)
    o = [[0.0] * m for _ in range(m)]
    for u in range(n_units):
        vals = [r[u] for r in data if r[u] is not None]
        mu = len(vals)
        if mu < 2:
            continue
        for x in range(mu):
            for y in range(mu):
                if x != y:
                    o[index[vals[x]]][index[vals[y]]] += 1.0 / (mu - 1)
    n_c = [sum(row) for row in o]
    n = sum(n_c)
    if n < 2:
        return None

    def delta2(c: int, k: int) -> float:
        if level == "nominal":
            return float(c != k)
        if level == "interval":
            return float((values[c] - values[k]) ** 2)  # type: ignore[operator]
        lo, hi = min(c, k), max(c, k)
        return (sum(n_c[lo : hi + 1]) - (n_c[c] + n_c[k]) / 2.0) ** 2

    d_o = sum(o[c][k] * delta2(c, k) for c in range(m) for k in range(m)) / n
    d_e = sum(n_c[c] * n_c[k] * delta2(c, k) for c in range(m) for k in range(m)) / (n * (n - 1))
    if d_e == 0:
        return None
    return 1.0 - d_o / d_e


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's τ_b between two rankings (levels or scores of the same outputs; ties allowed).
    None when either ranking ties everything."""
    if len(a) != len(b):
        raise ValueError(f"rankings of different lengths: {len(a)} and {len(b)}")
    conc = disc = ties_a = ties_b = 0
    for i, j in combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0:
            ties_a += 1
        if db == 0:
            ties_b += 1
        if da * db > 0:
            conc += 1
        elif da * db < 0:
            disc += 1
    n0 = len(a) * (len(a) - 1) // 2
    den = math.sqrt((n0 - ties_a) * (n0 - ties_b))
    if den == 0:
        return None
    return (conc - disc) / den


# ---------------------------------------------------------------------------- aggregation


def _wins(rankings: Sequence[Sequence[int]], k: int) -> list[list[float]]:
    """wins[i][j]: how many rankings put i ahead of j (a tie: half each way)."""
    wins = [[0.0] * k for _ in range(k)]
    for levels in rankings:
        if len(levels) != k:
            raise ValueError(f"a ranking of {len(levels)} outputs among rankings of {k}")
        for i, j in combinations(range(k), 2):
            if levels[i] < levels[j]:
                wins[i][j] += 1
            elif levels[j] < levels[i]:
                wins[j][i] += 1
            else:
                wins[i][j] += 0.5
                wins[j][i] += 0.5
    return wins


def _levels_from_order(groups: list[list[int]], k: int) -> list[int]:
    levels = [0] * k
    for level, group in enumerate(groups):
        for i in group:
            levels[i] = level
    return levels


def ranked_pairs(rankings: Sequence[Sequence[int]], k: int) -> list[int]:
    """Tideman's ranked pairs over several rankings (levels) of the same ``k`` outputs; the
    aggregate as levels. Equal margins are locked in by larger winning count, then by index."""
    if not rankings:
        raise ValueError("no rankings to aggregate")
    wins = _wins(rankings, k)
    pairs = [
        (wins[i][j] - wins[j][i], wins[i][j], i, j)
        for i in range(k)
        for j in range(k)
        if i != j and wins[i][j] > wins[j][i]
    ]
    pairs.sort(key=lambda p: (-p[0], -p[1], p[2], p[3]))
    locked: dict[int, set[int]] = {i: set() for i in range(k)}

    def reaches(src: int, dst: int) -> bool:
        stack, seen = [src], {src}
        while stack:
            x = stack.pop()
            if x == dst:
                return True
            for y in locked[x] - seen:
                seen.add(y)
                stack.append(y)
        return False

    for _, _, i, j in pairs:
        if not reaches(j, i):  # i -> j would not close a cycle
            locked[i].add(j)
    remaining = set(range(k))
    groups = []
    while remaining:
        beaten = {j for i in remaining for j in locked[i] if j in remaining}
        top = sorted(remaining - beaten)
        groups.append(top)
        remaining -= set(top)
    return _levels_from_order(groups, k)


def bradley_terry(
    rankings: Sequence[Sequence[int]], k: int, prior: float = 0.5, iters: int = 500
) -> list[float]:
    """Bradley–Terry log-strengths (mean 0) of ``k`` outputs from several rankings (levels)."""
    if not rankings:
        raise ValueError("no rankings to aggregate")
    wins = _wins(rankings, k)
    for i in range(k):
        for j in range(k):
            if i != j:
                wins[i][j] += prior / 2
    p = [1.0] * k
    for _ in range(iters):
        new = []
        for i in range(k):
            w_i = sum(wins[i][j] for j in range(k) if j != i)
            den = sum((wins[i][j] + wins[j][i]) / (p[i] + p[j]) for j in range(k) if j != i)
            new.append(w_i / den if den > 0 else p[i])
        g = math.exp(sum(math.log(x) for x in new) / k)  # fix the scale: geometric mean 1
        new = [x / g for x in new]
        done = max(abs(x - y) for x, y in zip(new, p)) < 1e-12
        p = new
        if done:
            break
    return [math.log(x) for x in p]


def levels_from_scores(scores: Sequence[float], tol: float = 1e-9) -> list[int]:
    """Levels of outputs ordered by score, highest first; scores within ``tol`` tie."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    levels = [0] * len(scores)
    level = 0
    for n, i in enumerate(order):
        if n > 0 and scores[order[n - 1]] - scores[i] > tol:
            level += 1
        levels[i] = level
    return levels
