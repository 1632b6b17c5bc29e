"""Sudoku: a seeded generator of puzzles with unique solutions, an exact solution counter, a checker.

A planning task whose answer is not written left to right (Kim et al. 2025, arXiv 2502.06768): the
prompt is the 81 cells row by row with the givens as digits and the blanks as `BLANK` ("."), the
response the 81 digits of the solution. `ddm.data.pair_datasets` registers the datasets built from it.

- `count_solutions(grid, limit)`: exact depth-first search with constraint bitmasks, the most
  constrained cell first; it stops at `limit` solutions (2 decides uniqueness).
- `solution_grid(rng)`: a uniformly shuffled valid grid: a random full grid by randomised search.
- `make_puzzle(rng, blanks)`: blanks cells of a random solution in a random order, each removal kept
  only if the solution stays unique; a fresh grid when the order runs out before `blanks`.
- `check(prompt, response)`: whether a response is a valid solution that keeps the givens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ddm.errors import InvalidArgument

__all__ = [
    "BLANK",
    "MAX_BLANKS",
    "check",
    "count_solutions",
    "format_grid",
    "make_puzzle",
    "make_puzzles",
    "parse_grid",
    "solution_grid",
]

BLANK = "."
MAX_BLANKS = 64  # a unique Sudoku has at least 17 givens (McGuire et al. 2012): 64 blanks at most
_ALL = 0x3FF & ~1  # bits 1..9
_UNIT_OF = [(r, c, 3 * (r // 3) + c // 3) for r in range(9) for c in range(9)]


def parse_grid(text: str) -> list[int]:
    """81 cells (digits 1-9, `BLANK` or 0 for a blank) to a list of ints, 0 for a blank."""
    if len(text) != 81:
        raise InvalidArgument(f"a Sudoku grid has 81 cells, got {len(text)} characters")
    cells = []
    for ch in text:
        if ch in (BLANK, "0"):
            cells.append(0)
        elif "1" <= ch <= "9":
            cells.append(int(ch))
        else:
            raise InvalidArgument(f"a Sudoku cell is a digit 1-9 or {BLANK!r}, got {ch!r}")
    return cells


def format_grid(cells: Sequence[int]) -> str:
    """The 81 cells as text, `BLANK` for 0."""
    return "".join(BLANK if v == 0 else str(v) for v in cells)


def _masks(cells: Sequence[int]) -> tuple[list[int], list[int], list[int]] | None:
    """The used-digit bitmasks of the rows, columns and boxes; None if a digit repeats in a unit."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(cells):
        if v:
            r, c, b = _UNIT_OF[i]
            bit = 1 << v
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return None
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
    return rows, cols, boxes


def _search(cells: list[int], units, limit: int, rng: random.Random | None) -> int:
    """Counts the completions of `cells` (in place; restored on return) up to `limit`; with `rng`, tries
    the digits in a random order and stops at the first completion, left in `cells`."""
    rows, cols, boxes = units
    best, best_free, best_n = -1, 0, 10
    for i, v in enumerate(cells):
        if v == 0:
            r, c, b = _UNIT_OF[i]
            free = _ALL & ~(rows[r] | cols[c] | boxes[b])
            n = bin(free).count("1")
            if n < best_n:
                best, best_free, best_n = i, free, n
                if n <= 1:
                    break
    if best < 0:
        return 1  # no blank left: one solution
    if best_n == 0:
        return 0
    digits = [d for d in range(1, 10) if best_free >> d & 1]
    if rng is not None:
        rng.shuffle(digits)
    r, c, b = _UNIT_OF[best]
    found = 0
    for d in digits:
        bit = 1 << d
        cells[best] = d
        rows[r] |= bit
        cols[c] |= bit
        boxes[b] |= bit
        found += _search(cells, units, limit - found, rng)
        rows[r] &= ~bit
        cols[c] &= ~bit
        boxes[b] &= ~bit
        if found >= limit or (rng is not None and found):
            if rng is None:
                cells[best] = 0
            return found
    cells[best] = 0
    return found


def count_solutions(grid: Sequence[int] | str, limit: int = 2) -> int:
    """The number of solutions of a grid (0 for blanks), counted exactly up to `limit`."""
    cells = parse_grid(grid) if isinstance(grid, str) else list(grid)
    if len(cells) != 81 or any(not 0 <= v <= 9 for v in cells):
        raise InvalidArgument("a Sudoku grid is 81 cells with values 0 (blank) to 9")
    units = _masks(cells)
    if units is None:
        return 0
    return _search(cells, units, limit, None)


def solution_grid(rng: random.Random) -> list[int]:
    """A random complete grid: randomised depth-first search from the empty grid."""
    cells = [0] * 81
    _search(cells, ([0] * 9, [0] * 9, [0] * 9), 1, rng)
    return cells


def make_puzzle(rng: random.Random, blanks: int) -> tuple[list[int], list[int]]:
    """`(puzzle, solution)`: `blanks` blank cells (0) and a unique solution."""
    if isinstance(blanks, bool) or not isinstance(blanks, int) or not 1 <= blanks <= MAX_BLANKS:
        raise InvalidArgument(f"blanks must be an integer in [1, {MAX_BLANKS}], got {blanks!r}")
    while True:
        solution = solution_grid(rng)
        puzzle = list(solution)
        order = list(range(81))
        rng.shuffle(order)
        removed = 0
        for i in order:
            puzzle[i] = 0
            if count_solutions(puzzle, 2) == 1:
                removed += 1
                if removed == blanks:
                    return puzzle, solution
            else:
                puzzle[i] = solution[i]


def make_puzzles(seed: int, n: int, blanks: int) -> list[tuple[str, str]]:
    """`n` puzzles of the generator seeded with `seed`, as `(prompt, response)` text pairs."""
    rng = random.Random(seed)
    return [tuple(map(format_grid, make_puzzle(rng, blanks))) for _ in range(n)]


def check(prompt: str, response: str) -> bool:
    """True iff `response` is a complete valid grid that keeps every given of `prompt`."""
    if len(response) != 81 or any(not "1" <= ch <= "9" for ch in response):
        return False
    cells = parse_grid(response)
    if _masks(cells) is None:
        return False
    givens = parse_grid(prompt)
    return all(g == 0 or g == v for g, v in zip(givens, cells, strict=True))
