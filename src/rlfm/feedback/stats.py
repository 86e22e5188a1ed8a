"""Agreement per project, labeler and item, and labeler screening, from the stored labels.

Only labelers' labels count towards agreement (researchers' labels on gold items are the
reference screening compares against). The statistics are those of agreement.py:

- project: pairwise-comparison agreement, Fleiss' κ and Krippendorff's α (nominal) on the
  pairwise outcomes (units: an item's output pairs), α (ordinal) on the 1–7 ratings and α
  (nominal) on the sensitive-content flag (units: an item's outputs), mean Kendall τ_b between
  two labelers' rankings of an item; for toxicity items, α (ordinal) of output toxicity;
- labeler: the same against every other labeler on the items they share (pooled: one κ over
  all of the labeler's pairs with others; Cohen's κ on outcomes, quadratic-weighted κ on
  ratings), and the screening criteria;
- item: pairwise agreement and mean τ among its labelers, and the ranked-pairs aggregate.

**Screening** (InstructGPT's labeler selection), per labeler, on the project's gold items:
agreement with the researchers' rankings (pairwise), agreement with their sensitive-content
judgement (an output is sensitive when any flag but "fails to follow the instruction" is set),
the mean 1–7 rating researchers gave the labeler's demonstrations, rescaled to 0..1 as
(r − 1)/6, and the self-assessment answer. A labeler **passes** when at least one criterion
was measured, every measured one reaches the project's ``pass_threshold``, and the
self-assessment is answered.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlfm.feedback import agreement as ag
from rlfm.feedback.db import Annotation, DemoRating, Item, Membership, Project, User
from rlfm.feedback.labels import SENSITIVE_FLAGS


@dataclass
class LabelerStats:
    user_id: int
    email: str
    annotations: int = 0
    mean_seconds: float | None = None
    agreement: float | None = None
    kappa: float | None = None
    kappa_ratings: float | None = None
    tau: float | None = None
    gold_ranking: float | None = None
    gold_flags: float | None = None
    demo_score: float | None = None
    self_assessment: str | None = None
    passed: bool = False


@dataclass
class ItemStats:
    item_id: int
    external_id: str | None
    labelers: int
    agreement: float | None
    tau: float | None
    aggregate: list[int] | None


@dataclass
class ProjectStats:
    project: str
    items: int = 0
    labelled_items: int = 0
    annotations: int = 0
    labelers: int = 0
    agreement: float | None = None
    fleiss_kappa: float | None = None
    alpha_comparisons: float | None = None
    alpha_ratings: float | None = None
    alpha_flags: float | None = None
    alpha_toxicity: float | None = None
    tau: float | None = None
    pass_threshold: float = 0.6
    per_labeler: list[LabelerStats] = field(default_factory=list)
    per_item: list[ItemStats] = field(default_factory=list)


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _sensitive(flags: dict[str, bool]) -> int:
    return int(any(flags[f] for f in SENSITIVE_FLAGS))


def project_stats(session: Session, project: Project) -> ProjectStats:
    """Every statistic of the module docstring for ``project``."""
    members = session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.project_id == project.id)
        .order_by(User.id)
    ).all()
    labelers = {u.id: (m, u) for m, u in members if m.role == "labeler"}
    researchers = {u.id for m, u in members if m.role == "researcher"}
    items = {
        it.id: it
        for it in session.scalars(
            select(Item).where(Item.project_id == project.id).order_by(Item.id)
        )
    }
    anns = session.scalars(
        select(Annotation).where(Annotation.project_id == project.id).order_by(Annotation.id)
    ).all()
    st = ProjectStats(project.name, items=len(items), pass_threshold=project.pass_threshold)

    by_item: dict[int, dict[int, Annotation]] = defaultdict(dict)  # item -> labeler -> label
    reference: dict[int, Annotation] = {}  # gold item -> first researcher label
    for a in anns:
        if a.user_id in labelers:
            by_item[a.item_id][a.user_id] = a
        elif a.user_id in researchers and items[a.item_id].gold and a.kind == "rank":
            reference.setdefault(a.item_id, a)
    st.annotations = sum(len(v) for v in by_item.values())
    st.labelled_items = len(by_item)
    st.labelers = len(labelers)

    # ---- rankings: per item, per labeler pair
    agree_sum: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # labeler -> [agree, total]
    kappa_pairs: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    rating_pairs: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    taus: dict[int, list[float]] = defaultdict(list)
    proj_agree = [0, 0]
    proj_taus: list[float] = []
    fleiss_rows: list[list[int]] = []
    unit_cmp: list[dict[int, int]] = []  # units (item, pair): labeler -> outcome
    unit_rating: list[dict[int, int]] = []  # units (item, output): labeler -> rating
    unit_flag: list[dict[int, int]] = []
    unit_tox: list[dict[int, int]] = []
    for item_id, labels in sorted(by_item.items()):
        item = items[item_id]
        ranks = {u: a.label for u, a in labels.items() if a.kind == "rank"}
        item_agree = [0, 0]
        item_taus: list[float] = []
        for u, v in combinations(sorted(ranks), 2):
            lu, lv = ranks[u]["levels"], ranks[v]["levels"]
            agree, total = ag.pairwise_agreement(lu, lv)
            for x in (u, v):
                agree_sum[x][0] += agree
                agree_sum[x][1] += total
            item_agree[0] += agree
            item_agree[1] += total
            cu, cv = ag.comparisons(lu), ag.comparisons(lv)
            kappa_pairs[u][0].extend(cu)
            kappa_pairs[u][1].extend(cv)
            kappa_pairs[v][0].extend(cv)
            kappa_pairs[v][1].extend(cu)
            ru, rv = ranks[u]["ratings"], ranks[v]["ratings"]
            rating_pairs[u][0].extend(ru)
            rating_pairs[u][1].extend(rv)
            rating_pairs[v][0].extend(rv)
            rating_pairs[v][1].extend(ru)
            t = ag.kendall_tau(lu, lv)
            if t is not None:
                taus[u].append(t)
                taus[v].append(t)
                item_taus.append(t)
        if ranks:
            k = len(item.completions)
            outcomes = {u: ag.comparisons(lab["levels"]) for u, lab in ranks.items()}
            for p in range(k * (k - 1) // 2):
                unit = {u: o[p] for u, o in outcomes.items()}
                unit_cmp.append(unit)
                fleiss_rows.append([sum(1 for o in unit.values() if o == c) for c in (1, 0, -1)])
            for i in range(k):
                unit_rating.append({u: lab["ratings"][i] for u, lab in ranks.items()})
                unit_flag.append({u: _sensitive(lab["flags"][i]) for u, lab in ranks.items()})
            aggregate = ag.ranked_pairs([lab["levels"] for lab in ranks.values()], k)
        else:
            aggregate = None
        tox = {u: a.label["toxicity"] for u, a in labels.items() if a.kind == "toxicity"}
        for i in range(len(item.completions) if tox else 0):
            unit_tox.append({u: t[i] for u, t in tox.items()})
        proj_agree[0] += item_agree[0]
        proj_agree[1] += item_agree[1]
        proj_taus.extend(item_taus)
        st.per_item.append(
            ItemStats(
                item_id,
                item.external_id,
                len(labels),
                item_agree[0] / item_agree[1] if item_agree[1] else None,
                _mean(item_taus),
                aggregate,
            )
        )
    st.agreement = proj_agree[0] / proj_agree[1] if proj_agree[1] else None
    st.tau = _mean(proj_taus)
    st.fleiss_kappa = ag.fleiss_kappa(fleiss_rows) if fleiss_rows else None
    ids = sorted(labelers)

    def alpha(units: list[dict[int, int]], level: ag.Level) -> float | None:
        units = [u for u in units if len(u) >= 2]
        if not units:
            return None
        table = [[u.get(r) for u in units] for r in ids]
        return ag.krippendorff_alpha(table, level)  # type: ignore[arg-type]

    st.alpha_comparisons = alpha(unit_cmp, "nominal")
    st.alpha_ratings = alpha(unit_rating, "ordinal")
    st.alpha_flags = alpha(unit_flag, "nominal")
    st.alpha_toxicity = alpha(unit_tox, "ordinal")

    # ---- screening
    demo_scores: dict[int, list[int]] = defaultdict(list)
    for ann_user, score in session.execute(
        select(Annotation.user_id, DemoRating.score)
        .join(DemoRating, DemoRating.annotation_id == Annotation.id)
        .where(Annotation.project_id == project.id)
    ):
        demo_scores[ann_user].append(score)
    for uid in ids:
        m, u = labelers[uid]
        ls = LabelerStats(uid, u.email, self_assessment=m.self_assessment)
        mine = [labels[uid] for labels in by_item.values() if uid in labels]
        ls.annotations = len(mine)
        ls.mean_seconds = _mean([a.client_ms / 1000 for a in mine])
        a_sum = agree_sum.get(uid)
        ls.agreement = a_sum[0] / a_sum[1] if a_sum and a_sum[1] else None
        if uid in kappa_pairs:
            ls.kappa = ag.cohen_kappa(*kappa_pairs[uid], labels=[1, 0, -1])
            ls.kappa_ratings = ag.cohen_kappa(
                *rating_pairs[uid], weights="quadratic", labels=list(range(1, 8))
            )
        ls.tau = _mean(taus.get(uid, []))
        g_rank, g_flag = [0, 0], [0, 0]
        for item_id, ref in reference.items():
            mine_gold = by_item.get(item_id, {}).get(uid)
            if mine_gold is None or mine_gold.kind != "rank":
                continue
            agree, total = ag.pairwise_agreement(mine_gold.label["levels"], ref.label["levels"])
            g_rank[0] += agree
            g_rank[1] += total
            for fm, fr in zip(mine_gold.label["flags"], ref.label["flags"]):
                g_flag[0] += _sensitive(fm) == _sensitive(fr)
                g_flag[1] += 1
        ls.gold_ranking = g_rank[0] / g_rank[1] if g_rank[1] else None
        ls.gold_flags = g_flag[0] / g_flag[1] if g_flag[1] else None
        ls.demo_score = _mean(demo_scores.get(uid, []))
        criteria = [ls.gold_ranking, ls.gold_flags]
        if ls.demo_score is not None:
            criteria.append((ls.demo_score - 1) / 6)
        measured = [c for c in criteria if c is not None]
        ls.passed = (
            bool(measured)
            and all(c >= project.pass_threshold for c in measured)
            and bool((ls.self_assessment or "").strip())
        )
        st.per_labeler.append(ls)
    return st


def screened_labelers(session: Session, project: Project) -> set[int]:
    """Ids of the labelers who pass screening (module docstring)."""
    return {ls.user_id for ls in project_stats(session, project).per_labeler if ls.passed}


# ---------------------------------------------------------------------------- as text


def fmt(x: float | None, pct: bool = False) -> str:
    """A statistic for a table: 3 decimals (or a percentage), "—" when undefined."""
    if x is None:
        return "—"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def format_stats(st: ProjectStats, per_item: bool = False) -> str:
    """The statistics as the plain-text tables ``rlfm label stats`` prints."""
    lines = [
        f"project {st.project}: {st.items} items, {st.labelled_items} labelled, "
        f"{st.annotations} labels by {st.labelers} labelers",
        "",
        "agreement between labelers          value",
        "----------------------------------  ------",
        f"pairwise comparisons agree          {fmt(st.agreement, True):>6}",
        f"Fleiss' kappa (comparisons)         {fmt(st.fleiss_kappa):>6}",
        f"Krippendorff's alpha (comparisons)  {fmt(st.alpha_comparisons):>6}",
        f"Krippendorff's alpha (ratings 1-7)  {fmt(st.alpha_ratings):>6}",
        f"Krippendorff's alpha (sensitive)    {fmt(st.alpha_flags):>6}",
        f"Kendall's tau (rankings, mean)      {fmt(st.tau):>6}",
    ]
    if st.alpha_toxicity is not None:
        lines.append(f"Krippendorff's alpha (toxicity)     {fmt(st.alpha_toxicity):>6}")
    width = max([len("labeler")] + [len(ls.email) for ls in st.per_labeler])
    head = (
        f"{'labeler':<{width}}  labels  time/s  agree  kappa  w-kappa    tau  gold-rank  "
        f"gold-flags  demo  self  pass"
    )
    lines += ["", head, "-" * len(head)]
    for ls in st.per_labeler:
        lines.append(
            f"{ls.email:<{width}}  {ls.annotations:>6}  "
            f"{(f'{ls.mean_seconds:.1f}' if ls.mean_seconds is not None else '—'):>6}  "
            f"{fmt(ls.agreement, True):>5}  {fmt(ls.kappa):>5}  {fmt(ls.kappa_ratings):>7}  "
            f"{fmt(ls.tau):>5}  {fmt(ls.gold_ranking, True):>9}  {fmt(ls.gold_flags, True):>10}  "
            f"{(f'{ls.demo_score:.1f}' if ls.demo_score is not None else '—'):>4}  "
            f"{('yes' if (ls.self_assessment or '').strip() else 'no'):>4}  "
            f"{('yes' if ls.passed else 'no'):>4}"
        )
    lines.append(
        f"(pass: every measured gold criterion ≥ {st.pass_threshold:g}, self-assessment given)"
    )
    if per_item:
        lines += ["", "item        labelers  agree    tau  ranked pairs", "-" * 48]
        for it in st.per_item:
            name = it.external_id or f"#{it.item_id}"
            agg = " > ".join(str(i) for i in _order(it.aggregate)) if it.aggregate else "—"
            lines.append(
                f"{name[:10]:<10}  {it.labelers:>8}  {fmt(it.agreement, True):>5}  "
                f"{fmt(it.tau):>5}  {agg}"
            )
    return "\n".join(lines)


def _order(levels: list[int]) -> list[str]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, lv in enumerate(levels):
        groups[lv].append(i)
    return ["=".join(map(str, groups[lv])) for lv in sorted(groups)]
