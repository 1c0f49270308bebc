"""E5-style text prefixes ("query: ", "passage: "), added exactly once per text."""

from collections.abc import Iterable


def add_prefix_once(texts: Iterable[str], prefix: str) -> tuple[list[str], int]:
    """Prepend `prefix` to every text that does not already start with it.

    Returns the prefixed texts and the number of texts that already carried the prefix and were
    left unchanged. An empty `prefix` returns the texts unchanged and a count of 0.
    """
    if not prefix:
        return list(texts), 0
    prefixed = []
    already_prefixed = 0
    for text in texts:
        if text.startswith(prefix):
            already_prefixed += 1
            prefixed.append(text)
        else:
            prefixed.append(prefix + text)
    return prefixed, already_prefixed
