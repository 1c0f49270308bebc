"""The simple way to split a text corpus for MLM, kept only as the benchmark's baseline.

Example:
    python benchmarks/naive_prepare_mlm_data.py --input_file corpus.txt --output_dir /tmp/naive

writes `train.csv` and `validation.csv` (column `text`). It reads every line into a list, builds a
pandas DataFrame, splits it with scikit-learn's `train_test_split` (a seeded numpy permutation
when scikit-learn is not installed) and writes both parts with `DataFrame.to_csv`. Memory grows
with the corpus, which is the point of the comparison.
"""

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


def split_rows(frame: pd.DataFrame, validation_split: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    try:
        from sklearn.model_selection import train_test_split
    except ImportError:
        order = np.random.default_rng(seed).permutation(len(frame))
        validation_rows = int(np.ceil(validation_split * len(frame)))
        return frame.iloc[order[validation_rows:]], frame.iloc[order[:validation_rows]]
    return train_test_split(frame, test_size=validation_split, random_state=seed)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_file", required=True, help="UTF-8 text file, one example per line")
    parser.add_argument("--output_dir", required=True, help="directory for train.csv and validation.csv")
    parser.add_argument("--validation_split", type=float, default=0.01, help="fraction of rows for validation (default 0.01)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split (default 42)")
    arguments = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")

    # 1. Every line into a list, then a DataFrame without the blank lines.
    with open(arguments.input_file, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    frame = pd.DataFrame({"text": lines})
    frame = frame[frame["text"].str.strip() != ""]

    # 2. Split and write.
    train, validation = split_rows(frame, arguments.validation_split, arguments.seed)
    output_dir = Path(arguments.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train.to_csv(output_dir / "train.csv", index=False)
    validation.to_csv(output_dir / "validation.csv", index=False)
    logger.info("Wrote %d train and %d validation rows to %s", len(train), len(validation), output_dir)


if __name__ == "__main__":
    main()
