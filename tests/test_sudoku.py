"""The Sudoku task (issue 31): the exact solution counter against brute force, unique puzzles at a chosen
number of blanks, the checker, determinism by seed, and the registry's pair datasets."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from _tiny import tiny_run
from ddm.cli import main
from ddm.data import pair_datasets
from ddm.data.pair_datasets import PAIR_DATASETS, PairDataset, load_pair_data
from ddm.data.sudoku import (
    BLANK,
    _masks,
    check,
    count_solutions,
    format_grid,
    make_puzzle,
    make_puzzles,
    parse_grid,
    solution_grid,
)
from ddm.errors import InvalidArgument
from ddm.training import train


def _brute_count(cells):
    """Every filling of the blanks tried: the number of valid grids."""
    blanks = [i for i, v in enumerate(cells) if v == 0]
    n = 0
    for digits in itertools.product(range(1, 10), repeat=len(blanks)):
        grid = list(cells)
        for i, d in zip(blanks, digits, strict=True):
            grid[i] = d
        n += _masks(grid) is not None
    return n


def _rectangle(solution):
    """Four cells (two rows of one band, two columns) holding a, b / b, a in two boxes: a deadly pattern."""
    for r1, r2 in itertools.combinations(range(9), 2):
        if r1 // 3 != r2 // 3:
            continue
        for c1, c2 in itertools.combinations(range(9), 2):
            if c1 // 3 == c2 // 3:
                continue
            a, b = solution[9 * r1 + c1], solution[9 * r1 + c2]
            if solution[9 * r2 + c1] == b and solution[9 * r2 + c2] == a:
                return [9 * r1 + c1, 9 * r1 + c2, 9 * r2 + c1, 9 * r2 + c2]
    return None


def test_the_counter_is_exact_against_brute_force():
    rng = random.Random(1)
    cases = 0
    while cases < 3:
        solution = solution_grid(rng)
        assert _masks(solution) is not None and 0 not in solution
        cells = list(solution)
        rect = _rectangle(solution)
        if rect is None:
            continue
        for i in rect:  # 2 solutions: the rectangle swaps
            cells[i] = 0
        grid = list(cells)
        grid[rng.choice([i for i in range(81) if grid[i]])] = 0
        for g in (cells, grid):
            assert count_solutions(g, limit=100) == _brute_count(g)
        assert count_solutions(cells, limit=100) == 2
        cases += 1
    bad = list(solution)
    bad[0], bad[1] = bad[1], 0  # a digit twice in a row
    assert count_solutions(bad) == 0 == _brute_count(bad)
    assert count_solutions([0] * 81, limit=37) == 37


@pytest.mark.parametrize("blanks", [1, 20, 45, 52])
def test_puzzles_have_the_blanks_and_a_unique_solution(blanks):
    rng = random.Random(blanks)
    for _ in range(3):
        puzzle, solution = make_puzzle(rng, blanks)
        assert puzzle.count(0) == blanks
        assert count_solutions(puzzle, limit=3) == 1
        assert check(format_grid(puzzle), format_grid(solution))
        assert all(p in (0, s) for p, s in zip(puzzle, solution, strict=True))
    with pytest.raises(InvalidArgument, match="blanks must be an integer in"):
        make_puzzle(rng, 70)


def test_the_checker():
    ((prompt, response),) = make_puzzles(5, 1, 40)
    assert check(prompt, response)
    assert BLANK in prompt and len(prompt) == 81 and response.isdigit()
    cells = parse_grid(response)
    blank = prompt.index(BLANK)
    given = next(i for i, ch in enumerate(prompt) if ch != BLANK)
    wrong = list(cells)
    wrong[blank] = wrong[blank] % 9 + 1  # a repeated digit
    assert not check(prompt, format_grid(wrong))
    assert not check(prompt, response[:80])
    assert not check(prompt, response[:-1] + BLANK)
    # a valid grid (digits relabelled) that changes the givens
    relabelled = format_grid([v % 9 + 1 for v in cells])
    assert _masks(parse_grid(relabelled)) is not None and not check(prompt, relabelled)
    assert check(BLANK * 81, relabelled)
    assert prompt[given] == response[given]


def test_the_generator_is_deterministic_by_seed():
    a, b, c = make_puzzles(3, 4, 30), make_puzzles(3, 4, 30), make_puzzles(4, 4, 30)
    assert a == b and a != c


@pytest.fixture
def small_sudoku(monkeypatch, tmp_path):
    monkeypatch.setenv("DDM_CACHE", str(tmp_path / "cache"))
    d = PairDataset("sudoku-test", "a few puzzles", lambda seed: make_puzzles(seed, 30, 10), 6,
                    PAIR_DATASETS["sudoku"].tokenizer, 163)  # fmt: skip
    monkeypatch.setitem(PAIR_DATASETS, "sudoku-test", d)
    return d


def test_a_pair_dataset_has_a_fixed_held_out_set_and_trains(small_sudoku, tmp_path, capsys):
    corpus = load_pair_data("sudoku-test", tokenizer="char", val_fraction=0.5, seq_len=163)
    assert corpus.n_val_pairs == 6 and corpus.n_train_pairs == 24
    pairs = [json.loads(x) for x in pair_datasets.pair_dataset_file("sudoku-test").read_text().splitlines()]
    assert pairs[-6:] == [{"prompt": p, "response": r} for p, r in make_puzzles(0, 30, 10)[-6:]]
    val = corpus.val_blocks(163)
    assert corpus.tokenizer.decode(val[0, :81].tolist()) == pairs[24]["prompt"]
    noised, scored = corpus.val_masks(163)
    assert not noised[:, :81].any() and noised[:, 81:].all() and torch.equal(noised, scored)
    path = train(tiny_run(tmp_path / "run", data="sudoku-test", seq_len=163, steps=2, objective="masked"))
    assert path.is_dir()
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "sudoku " in out and "sudoku-easy" in out and "generated (pairs)" in out
    assert "sudoku-test" in out and "6 held out" in out and "cached" in out
    assert main(["data", "fetch", "sudoku-test"]) == 0
    assert "sudoku-test: 30 pairs in" in capsys.readouterr().out
    with pytest.raises(InvalidArgument, match="needs seq_len >= 163"):
        load_pair_data("sudoku", tokenizer="char", val_fraction=0.1, seq_len=100)
