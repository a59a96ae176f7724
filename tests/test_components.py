import pytest

from interp.components import Component, ComponentError, Site, enumerate_components, granularity_shape
from interp.config import ModelConfig

CONFIG = ModelConfig(name="t", architecture="LlamaForCausalLM", n_layers=4, n_heads=6, n_kv_heads=2,
                     d_model=48, d_head=8, d_mlp=96, d_vocab=100, n_ctx=64)


@pytest.mark.parametrize("text, expected", [
    ("L5.H3", Component("z", 5, 3)),
    ("L5.MLP", Component("mlp_out", 5)),
    ("L5.ATTN", Component("attn_out", 5)),
    ("L5.RESID_PRE", Component("resid_pre", 5)),
    ("L5.H3@12", Component("z", 5, 3, 12)),
    ("L2.N1043", Component("mlp_post", 2, 1043)),
    ("l1.k0@-1", Component("k", 1, 0, -1)),
    ("L0.A2", Component("pattern", 0, 2)),
])
def test_parse_and_format_round_trip(text, expected):
    parsed = Component.parse(text)
    assert parsed == expected
    assert Component.parse(str(parsed)) == parsed


@pytest.mark.parametrize("bad", ["L5", "H3", "L5.X3", "L5.H", "L5.MLP3", "layer5.H3", ""])
def test_unparseable_names_raise_one_line(bad):
    with pytest.raises(ComponentError, match="cannot parse component"):
        Component.parse(bad)


@pytest.mark.parametrize("name, field", [("L4.H0", "layers"), ("L0.H6", "n_heads=6"), ("L0.K2", "n_kv_heads=2"),
                                         ("L0.N96", "d_mlp=96")])
def test_out_of_range_components_name_the_limit(name, field):
    with pytest.raises(ComponentError, match=field):
        Component.parse(name).validate(CONFIG)


def test_position_out_of_range():
    with pytest.raises(ComponentError, match="7 tokens"):
        Component.parse("L0.H0@7").validate(CONFIG, n_positions=7)


@pytest.mark.parametrize("granularity", ["resid", "attn_out", "heads", "heads_pos", "k_pos", "block", "neurons", "pattern"])
def test_enumeration_matches_shape(granularity):
    components = enumerate_components(CONFIG, granularity, n_positions=5)
    shape = granularity_shape(CONFIG, granularity, 5)
    assert len(components) == int(__import__("math").prod(shape))
    assert len(set(components)) == len(components)
    for component in components:
        component.validate(CONFIG, n_positions=5)


def test_heads_pos_order_is_layer_head_position():
    components = enumerate_components(CONFIG, "heads_pos", n_positions=3)
    assert components[:4] == [Component("z", 0, 0, 0), Component("z", 0, 0, 1), Component("z", 0, 0, 2), Component("z", 0, 1, 0)]
    assert [c.kind for c in enumerate_components(CONFIG, "k", 3)][:2] == ["k", "k"]
    assert len(enumerate_components(CONFIG, "k", 3)) == 4 * 2  # per KV group


def test_unknown_granularity():
    with pytest.raises(ComponentError, match="unknown granularity 'nope'"):
        enumerate_components(CONFIG, "nope", 3)


def test_site_of_component():
    assert Component.parse("L3.H1@2").site == Site("z", 3)
