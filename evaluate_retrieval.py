"""Score embedding models and a BM25 baseline on the same queries and corpus.

Example, a BEIR folder's test queries searched over its whole corpus:

    python evaluate_retrieval.py \
        --beir_dir data/scifact --qrels_split test \
        --models base=bert-base-uncased final=outputs/contrastive \
        --prefix_query "query: " --prefix_passage "passage: " \
        --output_dir outputs/report

Or the validation CSV of the contrastive stage (columns `query`, `positive`), whose positives form
the corpus, with more passages from `--corpus_file` as distractors.

Each model is a `NAME=PATH` pair. A sentence-transformers folder is loaded as saved; a plain
transformers folder or hub name gets mean pooling (zero-shot). Every model encodes the same prefixed
texts and is scored by cosine similarity. BM25 (the `bm25s` library, English stemmer and stop
words) ranks the texts without prefixes. Metrics: nDCG@10 with gains 2^score - 1, MRR@10 and
Recall@100; CSV pairs count as score 1.

Writes `report.json` (counts, settings and metrics per retriever) and `report.md` (the same
metrics as a markdown table) to `--output_dir`.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import Stemmer
import torch
from sentence_transformers.util import semantic_search

from e5_pipeline.beir import beir_paths, load_corpus, load_qrels, load_queries
from e5_pipeline.cli import build_argument_parser
from e5_pipeline.csv_io import load_csv_dataset
from e5_pipeline.ir_evaluation import build_retrieval_evaluation_data, load_distractor_passages
from e5_pipeline.logging_utils import run_script, setup_logging, write_json
from e5_pipeline.models import load_sentence_transformer
from e5_pipeline.prefixes import add_prefix
from e5_pipeline.retrieval_metrics import REPORT_METRICS, evaluate_rankings

logger = logging.getLogger(__name__)

# Recall@100 needs the first 100 documents of each ranking.
RANKING_DEPTH = 100
BM25_NAME = "bm25"


@dataclass
class EvaluationArguments:
    output_dir: str = field(metadata={"help": "Folder for report.json and report.md; created if missing."})
    models: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Models to score, each NAME=PATH (or a bare PATH, which is then also its name). PATH is a "
            "sentence-transformers folder, a plain transformers folder or a hub name; the last two get mean "
            "pooling. Default: none, so only BM25 is scored."
        },
    )
    bm25: bool = field(
        default=True,
        metadata={
            "help": "Whether to score BM25 (bm25s, English stemmer and stop words) besides the models. "
            "Default: on; --no_bm25 turns it off."
        },
    )
    beir_dir: str | None = field(
        default=None,
        metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); its whole corpus is searched."},
    )
    qrels_split: str = field(
        default="test", metadata={"help": "Qrels file of --beir_dir to score, without .tsv. Only with --beir_dir."}
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "CSV of query/positive pairs, instead of --beir_dir. Its distinct positives form the corpus."},
    )
    query_column: str = field(default="query", metadata={"help": "Query column of --validation_file."})
    positive_column: str = field(default="positive", metadata={"help": "Positive passage column of --validation_file."})
    corpus_file: str | None = field(
        default=None,
        metadata={
            "help": "Extra passages for --validation_file mode, searched as distractors: a BEIR corpus.jsonl, a CSV "
            "with a --corpus_text_column column, or a .txt file with one passage per line. Default: none."
        },
    )
    corpus_text_column: str = field(default="text", metadata={"help": "Passage column of a CSV --corpus_file."})
    prefix_query: str = field(default="", metadata={"help": "Prefix added to every query for the models, e.g. 'query: '."})
    prefix_passage: str = field(
        default="", metadata={"help": "Prefix added to every passage for the models, e.g. 'passage: '."}
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Maximum tokens per text for every model. Default: each model's own limit (512 for plain folders)."},
    )
    batch_size: int = field(default=64, metadata={"help": "Texts per encoding batch, a positive number."})
    device: str | None = field(
        default=None, metadata={"help": "Torch device, e.g. cpu, cuda or cuda:1. Default: the best available."}
    )


@dataclass
class RetrievalData:
    """Queries, corpus and judgements, keyed by id, plus the counts that the report shows."""

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    stats: dict


def parse_model_specs(specs: list[str]) -> list[tuple[str, str]]:
    """Split each `NAME=PATH` (or bare `PATH`) into `(name, path)`, rejecting empty and repeated names."""
    parsed = []
    for spec in specs:
        name, separator, path = spec.partition("=")
        if not separator:
            name, path = spec, spec
        if not name or not path:
            raise ValueError(f"--models entry {spec!r} is invalid: write NAME=PATH, e.g. final=outputs/contrastive.")
        if name == BM25_NAME or name in (known for known, _ in parsed):
            raise ValueError(f"--models name {name!r} is used twice (or is the reserved name {BM25_NAME!r}); give each model its own name.")
        parsed.append((name, path))
    return parsed


def check_device(device: str | None) -> None:
    """Reject a --device that is not a torch device or is not present on this machine."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device!r}: CUDA is not available on this machine; pass --device cpu or leave out --device."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0."
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"--device {device!r}: MPS is not available on this machine; pass --device cpu or leave out --device."
        )


def check_arguments(args: EvaluationArguments) -> None:
    """Reject contradicting or invalid arguments before any data or model is loaded."""
    if (args.beir_dir is None) == (args.validation_file is None):
        raise ValueError("Give exactly one data source: --beir_dir (BEIR folder) or --validation_file (CSV of pairs).")
    if args.beir_dir is not None and args.corpus_file is not None:
        raise ValueError("--corpus_file works with --validation_file only; --beir_dir already searches its whole corpus.")
    defaults = EvaluationArguments(output_dir="")
    # Flags that only one data source reads; a value other than the default is a mistake with the other.
    if args.beir_dir is not None:
        unused, source_flag = ("query_column", "positive_column", "corpus_text_column"), "--beir_dir"
    else:
        unused, source_flag = ("qrels_split",), "--validation_file"
    changed = [f"--{name} {getattr(args, name)!r}" for name in unused if getattr(args, name) != getattr(defaults, name)]
    if changed:
        verb, pronoun = ("has", "it") if len(changed) == 1 else ("have", "them")
        raise ValueError(f"{', '.join(changed)} {verb} no effect with {source_flag}; remove {pronoun}.")
    if args.batch_size <= 0:
        raise ValueError(f"--batch_size must be positive, got {args.batch_size!r}.")
    if args.max_seq_length is not None and args.max_seq_length <= 0:
        raise ValueError(f"--max_seq_length must be positive, got {args.max_seq_length!r}.")
    check_device(args.device)
    if not args.models and not args.bm25:
        raise ValueError("Nothing to score: give --models NAME=PATH ... or leave BM25 on.")
    for flag, path in (("--validation_file", args.validation_file), ("--corpus_file", args.corpus_file)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path!r} not found.")


def load_beir_data(beir_dir: str, qrels_split: str) -> RetrievalData:
    """Load the queries judged in `qrels/<qrels_split>.tsv` and the whole corpus of a BEIR folder."""
    paths = beir_paths(beir_dir, qrels_split)
    corpus = load_corpus(paths["corpus"])
    all_queries = load_queries(paths["queries"])
    qrels = load_qrels(paths["qrels"])
    missing_queries = sorted(set(qrels) - set(all_queries))
    if missing_queries:
        raise ValueError(f"{paths['qrels']} judges query ids missing from {paths['queries']}: {missing_queries[:5]!r}.")
    judged_documents = {document_id for relevance in qrels.values() for document_id in relevance}
    missing_documents = sorted(judged_documents - set(corpus))
    if missing_documents:
        raise ValueError(f"{paths['qrels']} judges document ids missing from {paths['corpus']}: {missing_documents[:5]!r}.")
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    stats = {"source": "beir", "beir_dir": str(beir_dir), "qrels_split": qrels_split, "judgements": sum(map(len, qrels.values()))}
    return RetrievalData(queries, corpus, qrels, stats)


def load_pair_data(args: EvaluationArguments) -> RetrievalData:
    """Build queries, corpus and score-1 judgements from a CSV of pairs and an optional corpus file.

    Queries and passages are keyed by their text, as the contrastive stage's evaluator keys them,
    so a query with several positives gets all of them as relevant.
    """
    columns = [args.query_column, args.positive_column]
    column_flags = {args.query_column: "--query_column", args.positive_column: "--positive_column"}
    rows = load_csv_dataset({"validation": args.validation_file}, columns, column_flags=column_flags)["validation"]
    pairs = [(row[args.query_column].strip(), row[args.positive_column].strip()) for row in rows]
    kept_pairs = [(query, positive) for query, positive in pairs if query and positive]
    dropped_empty = len(pairs) - len(kept_pairs)
    if dropped_empty:
        logger.warning("Dropped %d of %d rows of %s with an empty query or positive.", dropped_empty, len(pairs), args.validation_file)
    if not kept_pairs:
        raise ValueError(f"{args.validation_file} has no row with both a query and a positive, so there is nothing to evaluate.")
    distractors = []
    if args.corpus_file is not None:
        distractors = load_distractor_passages(args.corpus_file, csv_column=args.corpus_text_column, column_flag="--corpus_text_column")
    queries, positives = zip(*kept_pairs)
    evaluation_data = build_retrieval_evaluation_data(queries, positives, distractors)
    qrels = {
        query_id: dict.fromkeys(sorted(document_ids), 1) for query_id, document_ids in evaluation_data.relevant_docs.items()
    }
    stats = {
        "source": "pairs",
        "validation_file": args.validation_file,
        "rows_read": len(pairs),
        "rows_dropped_empty": dropped_empty,
        "positives": len(evaluation_data.corpus) - evaluation_data.num_distractors,
        "corpus_file": args.corpus_file,
        "corpus_file_passages": len(distractors),
        "distractors": evaluation_data.num_distractors,
        "judgements": sum(map(len, qrels.values())),
    }
    return RetrievalData(evaluation_data.queries, evaluation_data.corpus, qrels, stats)


def rank_with_bm25(data: RetrievalData) -> dict[str, list[str]]:
    """Rank the corpus for each query with BM25 over stemmed, stop-word-free English tokens."""
    document_ids = list(data.corpus)
    stemmer = Stemmer.Stemmer("english")
    corpus_tokens = bm25s.tokenize([data.corpus[i] for i in document_ids], stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(corpus_tokens, show_progress=False)
    query_ids = list(data.queries)
    # Query tokens as strings: bm25s maps them onto the corpus vocabulary and skips unknown ones.
    query_tokens = bm25s.tokenize(
        [data.queries[i] for i in query_ids], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
    )
    indices, _ = retriever.retrieve(query_tokens, k=min(RANKING_DEPTH, len(document_ids)), show_progress=False)
    return {query_id: [document_ids[j] for j in indices[row]] for row, query_id in enumerate(query_ids)}


def rank_with_model(name: str, path: str, data: RetrievalData, args: EvaluationArguments) -> dict[str, list[str]]:
    """Rank the corpus for each query by cosine similarity of the model's embeddings of the prefixed texts."""
    model = load_sentence_transformer(path, args.max_seq_length, device=args.device)
    for prompt_name, prefix in (("query", args.prefix_query), ("passage", args.prefix_passage)):
        saved_prompt = model.prompts.get(prompt_name)
        if saved_prompt and saved_prompt != prefix:
            logger.warning(
                "Model %r was saved with the %s prompt %r, but this report uses the prefix %r for every model.",
                name, prompt_name, saved_prompt, prefix,
            )
    query_ids, document_ids = list(data.queries), list(data.corpus)
    query_texts, _ = add_prefix([data.queries[i] for i in query_ids], args.prefix_query)
    passage_texts, _ = add_prefix([data.corpus[i] for i in document_ids], args.prefix_passage)
    # prompt="" keeps a saved default prompt from being added on top of the prefixes.
    encode_kwargs = dict(batch_size=args.batch_size, prompt="", convert_to_tensor=True, normalize_embeddings=True)
    logger.info("Encoding %d queries and %d passages with %r.", len(query_texts), len(passage_texts), name)
    query_embeddings = model.encode(query_texts, show_progress_bar=True, **encode_kwargs)  # (queries, dim)
    passage_embeddings = model.encode(passage_texts, show_progress_bar=True, **encode_kwargs)  # (passages, dim)
    hits = semantic_search(query_embeddings, passage_embeddings, top_k=min(RANKING_DEPTH, len(document_ids)))
    return {query_id: [document_ids[hit["corpus_id"]] for hit in hits[row]] for row, query_id in enumerate(query_ids)}


def format_markdown(results: list[dict], data: RetrievalData, args: EvaluationArguments) -> str:
    """Render the metrics as a markdown table, under one line on the data and the prefixes."""
    if data.stats["source"] == "beir":
        source = f"BEIR folder `{args.beir_dir}`, qrels split `{args.qrels_split}`"
    else:
        source = f"pairs from `{args.validation_file}`" + (f" plus passages from `{args.corpus_file}`" if args.corpus_file else "")
    lines = [
        "# Retrieval report",
        "",
        f"{len(data.queries):,} queries searched over {len(data.corpus):,} passages ({source}). "
        f"Model prefixes: query {args.prefix_query!r}, passage {args.prefix_passage!r}; BM25 gets no prefixes.",
        "",
        "| retriever | model | nDCG@10 | MRR@10 | Recall@100 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for result in results:
        metrics = " | ".join(f"{result[name]:.3f}" for name in REPORT_METRICS)
        lines.append(f"| {result['name']} | `{result['model']}` | {metrics} |")
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None) -> dict:
    """Score the retrievers, write the report files and return the report."""
    parser = build_argument_parser([EvaluationArguments])
    (eval_args,) = parser.parse_args_into_dataclasses(args=args)
    setup_logging()
    logger.info("Arguments: %s", eval_args)

    # 1. Check the arguments before any heavy work.
    check_arguments(eval_args)
    model_specs = parse_model_specs(eval_args.models)

    # 2. Load queries, corpus and judgements.
    if eval_args.beir_dir is not None:
        data = load_beir_data(eval_args.beir_dir, eval_args.qrels_split)
    else:
        data = load_pair_data(eval_args)
    logger.info("%d queries, %d passages, %d judgements.", len(data.queries), len(data.corpus), data.stats["judgements"])

    # 3. Rank and score with each retriever.
    retrievers = ([(BM25_NAME, BM25_NAME)] if eval_args.bm25 else []) + model_specs
    results = []
    for name, path in retrievers:
        start = time.perf_counter()
        rankings = rank_with_bm25(data) if name == BM25_NAME else rank_with_model(name, path, data, eval_args)
        metrics = evaluate_rankings(rankings, data.qrels)
        seconds = time.perf_counter() - start
        logger.info("%s: %s (%.1f s)", name, ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()), seconds)
        results.append({"name": name, "model": path, **metrics, "seconds": round(seconds, 2)})

    # 4. Write report.json and report.md.
    output_dir = Path(eval_args.output_dir)
    report = {
        "queries": len(data.queries),
        "passages": len(data.corpus),
        "data": data.stats,
        "prefix_query": eval_args.prefix_query,
        "prefix_passage": eval_args.prefix_passage,
        "results": results,
    }
    write_json(output_dir / "report.json", report)
    markdown = format_markdown(results, data, eval_args)
    (output_dir / "report.md").write_text(markdown, encoding="utf-8")
    logger.info("Wrote %s and %s:\n%s", output_dir / "report.json", output_dir / "report.md", markdown)
    return report


if __name__ == "__main__":
    run_script(main)
