"""Ranking metrics over graded relevance judgements: nDCG@k, MRR@k and Recall@k.

`qrels` maps a query id to `{document id: score}` as BEIR qrels do. A document is relevant when
its score is at least 1. nDCG uses the graded gain 2^score - 1 and a log2(rank + 1) discount, and
its ideal ranking sorts all judged documents of the query by score. These are the definitions of
trec_eval's `ndcg_cut`, `recip_rank` and `recall` measures.
"""

import math
from collections.abc import Mapping, Sequence

# The metrics that the retrieval report shows, in its column order.
REPORT_METRICS = ("ndcg@10", "mrr@10", "recall@100")


def _gain(score: int) -> float:
    return 2.0**score - 1.0 if score > 0 else 0.0


def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Return the nDCG of the first `k` documents of `ranking`; 0 when no document is relevant."""
    dcg = sum(_gain(relevance.get(document_id, 0)) / math.log2(rank + 2) for rank, document_id in enumerate(ranking[:k]))
    ideal_scores = sorted(relevance.values(), reverse=True)[:k]
    ideal_dcg = sum(_gain(score) / math.log2(rank + 2) for rank, score in enumerate(ideal_scores))
    return dcg / ideal_dcg if ideal_dcg > 0 else 0.0


def mrr_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Return 1 / rank of the first relevant document among the first `k`, or 0 when there is none."""
    for rank, document_id in enumerate(ranking[:k], start=1):
        if relevance.get(document_id, 0) >= 1:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Return the fraction of the relevant documents found among the first `k`; 0 when none is relevant."""
    relevant = {document_id for document_id, score in relevance.items() if score >= 1}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """Average nDCG@10, MRR@10 and Recall@100 over the queries of `qrels`.

    `rankings` maps each query id to its document ids, best first. A query of `qrels` that has no
    ranking counts as a ranking with nothing relevant, so that it lowers the mean instead of
    vanishing from it.

    Raises:
        ValueError: `qrels` is empty.
    """
    if not qrels:
        raise ValueError("No query has relevance judgements, so there is nothing to evaluate.")
    totals = dict.fromkeys(REPORT_METRICS, 0.0)
    for query_id, relevance in qrels.items():
        ranking = rankings.get(query_id, [])
        totals["ndcg@10"] += ndcg_at_k(ranking, relevance, 10)
        totals["mrr@10"] += mrr_at_k(ranking, relevance, 10)
        totals["recall@100"] += recall_at_k(ranking, relevance, 100)
    return {name: total / len(qrels) for name, total in totals.items()}
