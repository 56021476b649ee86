"""The last stage of search by image (`search_by_image`): the classified candidates in the
order a visitor sees them (copies first), and the regions the answer suggests."""

from __future__ import annotations

from ..embedders import ModelRef, get_embedder
from ..models import Image
from ..retrieval.params import RetrievalParams
from ..retrieval.tiers import COPY_TIERS, Decision, Match
from .search import RegionScore, SearchHit, search_vector
from .search_checks import Query


def ranked_hits(
    query: Query,
    decisions: dict[int, Decision],
    k: int,
    category: str,
    active: ModelRef,
    copies_ref: ModelRef,
    params: RetrievalParams,
) -> list[SearchHit]:
    """Copies first (the one covering most of the picture first, then most evidence first),
    then look-alikes: by the copy model's evidence when it is the active model; else by the active model's similarity, led by the copy
    model's closest look-alike when it is very close or its hash is by far the nearest (a
    copy too changed to be labelled one is still found first, whichever model serves
    similarity)."""
    copies = ordered_copies(decisions, float(query.picture.width * query.picture.height))
    closest = sorted(
        (label for label, d in decisions.items() if d.match not in COPY_TIERS),
        key=lambda la: -decisions[la].strength,
    )
    if active.name == copies_ref.name:
        alike = closest
        scores = {label: query.candidates[label].shown_cosine for label in decisions}
    else:
        semantic = get_embedder(active).embed([query.picture])[0]
        alike_hits = search_vector(semantic, k + len(copies), category=category, ref=active)
        lead = [
            la
            for la in closest
            if decisions[la].strength >= params.lead_cosine or decisions[la].distinct_hash
        ][:1]
        alike = lead + [h.image.pk for h in alike_hits]
        scores = {label: query.candidates[label].shown_cosine for label in copies + lead} | {
            h.image.pk: h.score for h in alike_hits
        }
    order = list(dict.fromkeys(copies + alike))
    rows = Image.objects.searchable().order_by()
    rows = rows.filter(category=category) if category else rows
    hits: list[SearchHit] = []
    step = k + 5  # rows read a slice at a time: most searches need only the first
    for start in range(0, len(order), step):
        found = rows.in_bulk(order[start : start + step])
        for label in order[start : start + step]:
            if label not in found:
                continue
            decision = decisions.get(label)
            hit = SearchHit(found[label], max(-1.0, min(1.0, scores.get(label, 0.0))))
            if decision is not None:
                hit.match, hit.explanation, hit.box = decision.match.value, decision.explanation, decision.box
            hits.append(hit)
            if len(hits) == k:
                return hits
    return hits


def ordered_copies(decisions: dict[int, Decision], area: float) -> list[int]:
    """The copies in the order shown: those found in one part of the picture (their boxes
    overlapping by half) are one group, led by the most evidence (a photo and the catalogue's
    other colour of it, both verified); exact first, then the group covering most of the
    picture, to a tenth (of several items in one picture, the one that fills most of it is
    its subject: a photo with another pasted over a corner), then the most evidence."""

    def covered(d: Decision) -> float:
        return 1.0 if d.box is None else round(d.box.area / area, 1)

    def same_part(a: Decision, b: Decision) -> bool:
        return (a.box is None and b.box is None) or (
            a.box is not None and b.box is not None and a.box.iou(b.box) >= 0.5
        )

    by_evidence = sorted(
        (label for label, d in decisions.items() if d.match in COPY_TIERS),
        key=lambda la: (decisions[la].match is not Match.EXACT, -decisions[la].strength),
    )
    groups: list[list[int]] = []
    for label in by_evidence:
        group = next((g for g in groups if same_part(decisions[g[0]], decisions[label])), None)
        if group is None:
            groups.append([label])
        else:
            group.append(label)
    groups.sort(
        key=lambda g: (
            decisions[g[0]].match is not Match.EXACT,
            -covered(decisions[g[0]]),
            -decisions[g[0]].strength,
        )
    )
    return [label for g in groups for label in g]


def suggested_regions(
    query: Query, decisions: dict[int, Decision], params: RetrievalParams
) -> list[RegionScore]:
    """Where the items may be: copies' outlines (most evidence first), then the look-alikes'
    regions, then the best regions searched, without overlapping ones. Copies lead: a
    look-alike found in a grid window must not push a copy's exact outline off the list;
    every copy's outline is shown (six products of a listing page are six regions)."""
    boxed = sorted(
        ((label, d) for label, d in decisions.items() if d.box is not None),
        key=lambda item: (item[1].match not in COPY_TIERS, -item[1].strength),
    )
    candidates = [
        RegionScore(d.box, query.candidates[label].shown_cosine) for label, d in boxed if d.box is not None
    ]
    candidates += sorted(query.regions, key=lambda r: -r.score)
    shown = max(params.regions_shown, sum(d.match in COPY_TIERS for _, d in boxed))
    chosen: list[RegionScore] = []
    for region in candidates:
        if all(region.box.iou(other.box) < 0.5 for other in chosen):
            chosen.append(region)
        if len(chosen) == shown:
            break
    return chosen
