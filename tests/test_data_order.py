"""The seeded order in which training plays the train split's items."""

from __future__ import annotations

import pytest

from reopold_agent.data_order import train_item_index


def _pass(n, *, seed, pass_index=0, shuffle=True):
    return [train_item_index(pass_index * n + i, n, seed=seed, shuffle=shuffle) for i in range(n)]


def test_every_pass_plays_every_item_once_in_a_new_order():
    first, second = _pass(50, seed=0), _pass(50, seed=0, pass_index=1)
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != list(range(50)) and second != first


def test_the_order_depends_on_the_seed_and_nothing_else():
    assert _pass(50, seed=0) == _pass(50, seed=0)
    assert _pass(50, seed=0) != _pass(50, seed=1)
    assert train_item_index(123, 100_000, seed=3) == train_item_index(123, 100_000, seed=3)


def test_without_shuffle_items_are_played_in_index_order_pass_after_pass():
    assert [train_item_index(i, 4, seed=7, shuffle=False) for i in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("position, num_items, message", [(0, 0, "train split is empty"), (-1, 5, "position")])
def test_bad_arguments_are_named(position, num_items, message):
    with pytest.raises(ValueError, match=message):
        train_item_index(position, num_items, seed=0)
