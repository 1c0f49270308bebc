"""The one place where query and passage prefixes (E5's `query: ` / `passage: `) are added."""

from collections.abc import Iterable


def add_prefix(texts: Iterable[str], prefix: str) -> tuple[list[str], int]:
    """Prepend `prefix` to each text that does not already start with it.

    Returns the prefixed texts and how many already started with `prefix` and were left as they
    were, so that callers can log that count. An empty prefix returns the texts unchanged and 0.
    """
    texts = list(texts)
    if not prefix:
        return texts, 0
    prefixed = []
    already_prefixed = 0
    for text in texts:
        if text.startswith(prefix):
            already_prefixed += 1
            prefixed.append(text)
        else:
            prefixed.append(prefix + text)
    return prefixed, already_prefixed
