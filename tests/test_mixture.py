"""Mixture arithmetic: input specs, weights, budgets, the draw of documents and held-out sets."""

import numpy as np
import pytest

from llmforge.data.mixture import budgets, draw, hold_out, parse_source, resolve_weights
from llmforge.errors import InputError


def test_specs_name_and_weight_inputs(tmp_path):
    (tmp_path / "web").mkdir()
    assert parse_source("web=docs/web:0.7") == parse_source("web=docs/web:.7")
    spec = parse_source("web=docs/web:0.7")
    assert (spec.name, str(spec.path), spec.weight) == ("web", "docs/web", 0.7)
    spec = parse_source(f"{tmp_path}/web:2")
    assert (spec.name, spec.path, spec.weight) == ("web", tmp_path / "web", 2.0)
    odd = tmp_path / "a:b=c"  # an existing path is taken whole, colons and all
    odd.mkdir()
    assert parse_source(str(odd)).weight is None and parse_source(str(odd)).path == odd


@pytest.mark.parametrize("spec", ["web=docs:abc", "docs:-1", "docs:0", "docs:nan", "docs:inf", "web=:0.5"])
def test_weights_that_do_not_parse_are_refused(spec):
    with pytest.raises(InputError, match=f"^{spec}: "):
        parse_source(spec)


def test_weights_come_from_specs_or_config_and_must_cover_every_input():
    specs = [parse_source("web=a:0.7"), parse_source("wiki=b:0.3")]
    assert resolve_weights(specs, {}) == {"web": 0.7, "wiki": 0.3}
    assert resolve_weights(specs, {"web": 1.0, "wiki": 1.0}) == {
        "web": 0.7,
        "wiki": 0.3,
    }  # the command line wins
    named = [parse_source("web=a"), parse_source("wiki=b")]
    assert resolve_weights(named, {"web": 3, "wiki": 1}) == {"web": 3, "wiki": 1}
    assert resolve_weights(named, {}) == {}
    with pytest.raises(InputError, match="give every input a weight or none"):
        resolve_weights([parse_source("web=a:0.7"), parse_source("wiki=b")], {})
    with pytest.raises(InputError, match="the weights name code, web but the inputs are named web, wiki"):
        resolve_weights(named, {"web": 1, "code": 1})
    with pytest.raises(InputError, match="two inputs are named 'a'"):
        resolve_weights([parse_source("x/a"), parse_source("y/a")], {})


def test_budgets_split_the_total_by_weight_or_keep_natural_shares():
    natural = {"web": 900, "wiki": 100}
    assert budgets(natural, {}, None) == {"web": 900, "wiki": 100}
    assert budgets(natural, {}, 500) == {"web": 450, "wiki": 50}
    assert budgets(natural, {"web": 1, "wiki": 1}, None) == {"web": 500, "wiki": 500}
    assert budgets(natural, {"web": 0.7, "wiki": 0.3}, 2000) == pytest.approx({"web": 1400, "wiki": 600})


def test_draw_repeats_whole_passes_then_a_subset():
    rng = np.random.default_rng(0)
    sizes = np.full(10, 100)
    counts = draw(sizes, 2380, rng)
    assert sorted(counts.tolist()) == [2] * 6 + [3] * 4  # 2 passes, then the 4 documents nearest 380
    assert int((counts * sizes).sum()) == 2400
    subset = draw(sizes, 420, rng)
    assert subset.tolist().count(1) == 4 and subset.max() == 1
    assert draw(sizes, 0, rng).sum() == 0


def test_hold_out_takes_a_fraction_never_all_and_respects_a_size_cap():
    rng = np.random.default_rng(0)
    assert hold_out(np.full(100, 10), 0.05, rng).sum() == 5
    assert hold_out(np.full(3, 10), 0.01, rng).sum() == 1  # at least one
    assert hold_out(np.full(2, 10), 0.9, rng).sum() == 1  # never all
    assert hold_out(np.full(1, 10), 0.5, rng).sum() == 0
    assert hold_out(np.full(100, 10), 0.5, rng, max_size=35).sum() == 3
    assert hold_out(np.full(100, 10), 0.5, rng, max_size=1).sum() == 1
    assert hold_out(np.full(100, 10), 0.0, rng).sum() == 0
