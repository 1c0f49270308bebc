"""Logging set-up and the JSON files that each stage writes beside its output."""

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def setup_logging(level: int = logging.INFO, main_process: bool = True) -> None:
    """Configure the root logger; processes other than the main one log warnings and errors only.

    A handler that is already installed (pytest's log capture, an embedding application's) is
    kept, and only the level changes.
    """
    effective_level = level if main_process else logging.WARNING
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=effective_level,
    )
    logging.getLogger().setLevel(effective_level)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically, so a reader never sees half a file.

    Non-finite floats are written as the JavaScript literals `Infinity` and `NaN`, as Python's
    `json` module reads them back; the transformers example scripts do the same for perplexity.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_descriptor, temporary_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(file_descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.replace(temporary_path, path)
    except BaseException:
        os.unlink(temporary_path)
        raise


def run_script(main: Callable[[list[str]], Any]) -> None:
    """Run a script's `main` on the command-line arguments.

    An invalid input (ValueError, FileNotFoundError) ends the process with exit status 1 and its
    message as one ERROR line. The traceback is logged at DEBUG level.
    """
    logger = logging.getLogger(main.__module__)
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as error:
        logger.debug("Traceback of the error below:", exc_info=True)
        logger.error("%s", error)
        sys.exit(1)
