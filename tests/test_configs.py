"""Shipped configs load, say where they come from, match the official files, and bad configs are refused."""

import json

import pytest

from dslab import configs
from dslab.configs import REQUIRED_FIELDS, ModelArgs

SHIPPED = ["deepseek-v3-671b", "deepseek-v2-236b", "deepseek-v2-lite-16b", "deepseek-llm-67b", "llama-3.1-405b",
           "tiny-moe", "tiny-mla", "tiny-mha", "tiny-gqa", "tiny-v3"]


def test_every_needed_config_is_shipped():
    assert set(SHIPPED) <= set(configs.available())


@pytest.mark.parametrize("name", configs.available())
def test_shipped_config_loads_with_source_and_every_field(name, tmp_path):
    args = configs.load(name)
    assert args.name == name and args.source.strip()
    # The file spells out every field, so the strict file loader agrees with load().
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({k: v for k, v in args.to_dict().items() if k != "name"}))
    assert configs.load_file(path) == args


def test_v3_matches_config_671b():
    expected = dict(vocab_size=129280, dim=7168, inter_dim=18432, moe_inter_dim=2048, n_layers=61, n_dense_layers=3,
                    n_heads=128, n_routed_experts=256, n_shared_experts=1, n_activated_experts=8, n_expert_groups=8,
                    n_limited_groups=4, route_scale=2.5, score_func="sigmoid", q_lora_rank=1536, kv_lora_rank=512,
                    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, gate_bias=True, n_mtp=1,
                    max_seq_len=16384, original_seq_len=4096, rope_theta=10000.0, rope_factor=40.0, beta_fast=32,
                    beta_slow=1, mscale=1.0, attn="mla")
    assert {k: getattr(configs.load("deepseek-v3-671b"), k) for k in expected} == expected


@pytest.mark.parametrize("name, fields", [
    ("deepseek-v2-236b", dict(dim=5120, n_layers=60, n_routed_experts=160, n_shared_experts=2, n_activated_experts=6,
                              n_expert_groups=8, n_limited_groups=3, route_scale=16.0, score_func="softmax",
                              q_lora_rank=1536, gate_bias=False)),
    ("deepseek-v2-lite-16b", dict(dim=2048, n_layers=27, n_heads=16, n_routed_experts=64, q_lora_rank=0,
                                  mscale=0.707)),
    ("deepseek-llm-67b", dict(attn="gqa", n_layers=95, dim=8192, n_heads=64, n_kv_heads=8, head_dim=128,
                              n_routed_experts=0, max_seq_len=4096)),
    ("llama-3.1-405b", dict(attn="gqa", vocab_size=128256, dim=16384, n_layers=126, n_kv_heads=8, inter_dim=53248)),
])
def test_published_configs(name, fields):
    args = configs.load(name)
    assert {k: getattr(args, k) for k in fields} == fields


def test_tiny_presets_have_the_advertised_shape():
    moe, v3 = configs.load("tiny-moe"), configs.load("tiny-v3")
    assert (moe.n_routed_experts, moe.n_activated_experts, moe.n_shared_experts, moe.gate_bias) == (16, 4, 1, True)
    assert v3.is_moe and v3.attn == "mla" and v3.n_mtp == 1
    assert configs.load("tiny-mla").attn == "mla" and not configs.load("tiny-mla").is_moe
    assert configs.load("tiny-mha").kv_heads == 4 and configs.load("tiny-gqa").kv_heads == 2
    assert all(configs.load(n).vocab_size == 128 for n in configs.available() if n.startswith("tiny-"))


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*deepseek-v3-671b"):
        configs.load("deepseek-v4")
    with pytest.raises(TypeError, match="name"):
        configs.load(3)


def _v3_json(tmp_path, drop=(), **changes):
    data = {k: v for k, v in configs.load("deepseek-v3-671b").to_dict().items() if k != "name" and k not in drop}
    path = tmp_path / "custom.json"
    path.write_text(json.dumps({**data, **changes}))
    return path


def test_load_file_names_the_config_after_the_file(tmp_path):
    assert configs.load_file(str(_v3_json(tmp_path))).name == "custom"


@pytest.mark.parametrize("field", ["n_layers", "source", "gate_bias"])
def test_missing_field_is_named(tmp_path, field):
    with pytest.raises(ValueError, match=f"missing field.*{field}"):
        configs.load_file(_v3_json(tmp_path, drop=(field,)))


@pytest.mark.parametrize("changes, message", [
    (dict(n_layer=61), "unknown config field"),
    (dict(source="  "), "non-empty 'source'"),
    (dict(name="v3"), "must not set 'name'"),
    (dict(dim=0), "dim must be > 0"),
])
def test_bad_files_are_refused(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        configs.load_file(_v3_json(tmp_path, **changes))


def test_bad_json_and_bad_path(tmp_path):
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        configs.load_file(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        configs.load_file(tmp_path / "list.json")
    with pytest.raises(TypeError, match="path"):
        configs.load_file(3)


@pytest.mark.parametrize("changes, message", [
    (dict(n_activated_experts=300), "n_activated_experts .*top-k"),
    (dict(dim=0), "dim must be > 0"),
    (dict(n_layers=-1), "n_layers must be > 0"),
    (dict(vocab_size=0), "vocab_size must be > 0"),
    (dict(moe_inter_dim=0), "moe_inter_dim must be > 0"),
    (dict(kv_lora_rank=0), "kv_lora_rank must be > 0"),
    (dict(qk_rope_head_dim=63), "qk_rope_head_dim must be a positive even"),
    (dict(n_dense_layers=62), "n_dense_layers"),
    (dict(n_expert_groups=7), "n_expert_groups .* divide"),
    (dict(n_limited_groups=9), "n_limited_groups"),
    (dict(n_limited_groups=1, n_activated_experts=33), "n_limited_groups \\* experts per group"),
    (dict(n_expert_groups=256, n_limited_groups=8), "2 experts per group"),
    (dict(score_func="relu"), "score_func"),
    (dict(route_scale=0.0), "route_scale"),
    (dict(attn="linear"), "attn must be one of"),
    (dict(rope_factor=0.5), "rope_factor"),
    (dict(beta_slow=40), "beta_slow"),
])
def test_invalid_values_raise_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        configs.load("deepseek-v3-671b").replace(**changes)


@pytest.mark.parametrize("changes, message", [
    (dict(dim=100, n_heads=3), "n_heads \\(3\\) must divide dim \\(100\\)"),
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(attn="mha", n_kv_heads=2), "must equal n_heads"),
    (dict(attn="mqa", n_kv_heads=2), "must be 1"),
    (dict(inter_dim=0), "inter_dim must be > 0 for a dense model"),
])
def test_invalid_classic_attention(changes, message):
    base = configs.load("tiny-gqa").replace(head_dim=0)
    with pytest.raises(ValueError, match=message):
        base.replace(**changes)


@pytest.mark.parametrize("changes", [dict(dim=1.5), dict(n_layers=True), dict(gate_bias="yes"), dict(attn=1),
                                     dict(route_scale="2.5"), dict(rope_theta=float("nan"))])
def test_wrong_types_raise_type_error(changes):
    with pytest.raises(TypeError, match=next(iter(changes))):
        configs.load("deepseek-v3-671b").replace(**changes)


def test_replace_to_dict_and_from_dict():
    v3 = configs.load("deepseek-v3-671b")
    assert ModelArgs.from_dict(v3.to_dict()) == v3
    assert v3.replace(route_scale=3).route_scale == 3.0 and isinstance(v3.replace(route_scale=3).route_scale, float)
    with pytest.raises(TypeError, match="no field"):
        v3.replace(n_experts=3)
    assert "name" not in REQUIRED_FIELDS and "source" in REQUIRED_FIELDS
