"""Seeded train/validation splits with an exact validation size, shared by both prepare scripts.

The validation set contains exactly floor(n * validation_split) units (lines, rows or queries),
computed on the decimal value the user typed, so 0.29 of 100 is 29 and not 28. The units are a
uniform random subset drawn with `numpy.random.default_rng(seed)`, kept as a packed bit mask of
n bits, so choosing them needs memory for the mask and one sampling block only.
"""

import math
from fractions import Fraction

import numpy as np

# Units sampled per step; a multiple of 8 so that each step fills whole bytes of the mask.
SAMPLING_BLOCK = 1 << 20


def check_validation_split(validation_split: float) -> None:
    """Raise ValueError unless 0 <= validation_split < 1."""
    if not (0.0 <= validation_split < 1.0) or math.isnan(validation_split):
        raise ValueError(
            f"--validation_split {validation_split!r} is not a fraction in [0, 1); use e.g. 0.01 for 1% of the "
            "rows, or 0 to write no validation file."
        )


def validation_size(total: int, validation_split: float, unit: str) -> int:
    """Return floor(total * validation_split), raising if a non-zero split leaves no validation `unit`.

    Raises:
        ValueError: the split is above 0 but rounds down to 0 units of `unit` (e.g. "lines").
    """
    size = math.floor(Fraction(repr(validation_split)) * total)
    if validation_split > 0 and size == 0:
        minimum = Fraction(1, total) if total else None
        hint = f"raise it to at least {float(minimum):.6g} (1/{total})" if minimum else "add input"
        raise ValueError(
            f"--validation_split {validation_split!r} of {total} {unit} leaves 0 validation {unit} "
            f"(floor({total} * {validation_split!r}) = 0); {hint}, or pass --validation_split 0 to write no "
            "validation file."
        )
    return size


def choose_validation_mask(total: int, size: int, seed: int) -> np.ndarray:
    """Choose `size` of `total` units uniformly at random and return them as a packed bit mask.

    Bit i of the result (`numpy.unpackbits` order) is set when unit i goes to validation. The
    units are drawn block by block: a hypergeometric draw gives how many picks fall into each
    block, then `Generator.choice` places them, which gives every subset of `size` units the
    same probability.
    """
    # NOTE: numpy's hypergeometric sampler requires fewer than 10**9 units in all.
    rng = np.random.default_rng(seed)
    mask = np.zeros((total + 7) // 8, dtype=np.uint8)
    units_left, picks_left = total, size
    for start in range(0, total, SAMPLING_BLOCK):
        if picks_left == 0:
            break
        block = min(SAMPLING_BLOCK, total - start)
        picks = (
            picks_left if block == units_left else int(rng.hypergeometric(picks_left, units_left - picks_left, block))
        )
        chosen = np.zeros(block, dtype=bool)
        chosen[rng.choice(block, picks, replace=False)] = True
        packed = np.packbits(chosen)
        mask[start // 8 : start // 8 + packed.size] = packed
        units_left -= block
        picks_left -= picks
    return mask


def mask_slice(mask: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Return bits `start` to `stop` (exclusive) of a packed mask as a boolean array."""
    if stop <= start:
        return np.zeros(0, dtype=bool)
    first_byte = start // 8
    bits = np.unpackbits(mask[first_byte : (stop + 7) // 8])
    offset = start - first_byte * 8
    return bits[offset : offset + stop - start].astype(bool)
