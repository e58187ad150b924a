"""Published and course model configurations, loaded by name from the JSON files beside this module.

``ModelArgs`` mirrors ``ModelArgs`` in DeepSeek-V3's ``inference/model.py`` (same field names and defaults, which
describe DeepSeek-V2-Lite), plus the few fields needed to also describe dense MHA/GQA/MQA models such as Llama 3.1
405B and DeepSeek LLM 67B. Every JSON file carries a ``source`` saying where its numbers come from, and spells out
every field (``load``/``load_file`` refuse a file that leaves one to its default), so a config reads on its own.

    >>> from dslab import configs
    >>> configs.load("deepseek-v3-671b").n_routed_experts
    256
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

ATTENTION_KINDS = ("mla", "mha", "gqa", "mqa")
SCORE_FUNCS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class ModelArgs:
    """A model's architecture. Field names follow DeepSeek-V3's ``inference/model.py``.

    attn: "mla" (DeepSeek) or "mha"/"gqa"/"mqa" (classic); n_kv_heads and head_dim are used by the classic kinds.
    n_routed_experts == 0 means a dense model (every layer uses the inter_dim FFN). n_mtp is the number of
    Multi-Token Prediction modules (num_nextn_predict_layers; V3 has 1, not counted in its 671B).
    gate_bias: whether the router has the aux-loss-free bias (the official code enables it only for dim == 7168).
    """

    name: str = "custom"
    source: str = ""
    vocab_size: int = 102400
    dim: int = 2048
    inter_dim: int = 10944
    moe_inter_dim: int = 1408
    n_layers: int = 27
    n_dense_layers: int = 1
    n_heads: int = 16
    # attention
    attn: str = "mla"
    n_kv_heads: int = 0
    head_dim: int = 0
    q_lora_rank: int = 0
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # mixture of experts
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    n_activated_experts: int = 6
    n_expert_groups: int = 1
    n_limited_groups: int = 1
    score_func: str = "softmax"
    route_scale: float = 1.0
    gate_bias: bool = False
    # multi-token prediction, embeddings, positions
    n_mtp: int = 0
    tie_embeddings: bool = False
    max_seq_len: int = 4096
    original_seq_len: int = 4096
    rope_theta: float = 10000.0
    rope_factor: float = 40.0
    beta_fast: int = 32
    beta_slow: int = 1
    mscale: float = 1.0

    def __post_init__(self):
        self._check_types()
        positive = ["vocab_size", "dim", "n_layers", "n_heads", "max_seq_len", "original_seq_len"]
        non_negative = ["inter_dim", "moe_inter_dim", "n_dense_layers", "n_kv_heads", "head_dim", "q_lora_rank",
                        "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts",
                        "n_shared_experts", "n_activated_experts", "n_mtp"]
        for k in positive:
            if getattr(self, k) <= 0:
                raise ValueError(f"ModelArgs.{k} must be > 0, got {getattr(self, k)}")
        for k in non_negative:
            if getattr(self, k) < 0:
                raise ValueError(f"ModelArgs.{k} must be >= 0, got {getattr(self, k)}")
        if self.attn not in ATTENTION_KINDS:
            raise ValueError(f"ModelArgs.attn must be one of {ATTENTION_KINDS}, got {self.attn!r}")
        if self.n_dense_layers > self.n_layers:
            raise ValueError(f"ModelArgs.n_dense_layers ({self.n_dense_layers}) must be <= n_layers ({self.n_layers})")
        self._check_positions()
        self._check_attention()
        if self.is_moe:
            self._check_moe()
        elif self.inter_dim <= 0:
            raise ValueError("ModelArgs.inter_dim must be > 0 for a dense model (n_routed_experts == 0)")

    def _check_types(self):
        # Annotations are strings here (``from __future__ import annotations``).
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (not isinstance(v, int) or isinstance(v, bool)):
                raise TypeError(f"ModelArgs.{f.name} must be an int, got {v!r}")
            if f.type == "float":
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    raise TypeError(f"ModelArgs.{f.name} must be a finite float, got {v!r}")
                object.__setattr__(self, f.name, float(v))  # JSON may spell 16.0 as 16
            if f.type == "bool" and not isinstance(v, bool):
                raise TypeError(f"ModelArgs.{f.name} must be a bool, got {v!r}")
            if f.type == "str" and not isinstance(v, str):
                raise TypeError(f"ModelArgs.{f.name} must be a str, got {v!r}")

    def _check_positions(self):
        # RoPE base and YaRN (V3 §4.3: s = 40, α = 1, β = 32; official code beta_fast = 32, beta_slow = 1).
        if not self.rope_theta > 0:
            raise ValueError(f"ModelArgs.rope_theta must be > 0, got {self.rope_theta}")
        if not self.rope_factor >= 1:
            raise ValueError(f"ModelArgs.rope_factor must be >= 1, got {self.rope_factor}")
        if not self.mscale > 0:
            raise ValueError(f"ModelArgs.mscale must be > 0, got {self.mscale}")
        if not 0 < self.beta_slow < self.beta_fast:
            raise ValueError(f"ModelArgs.beta_slow and beta_fast must satisfy 0 < beta_slow < beta_fast, "
                             f"got {self.beta_slow} and {self.beta_fast}")

    def _check_attention(self):
        if self.attn == "mla":
            for k in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
                if getattr(self, k) <= 0:
                    raise ValueError(f"ModelArgs.{k} must be > 0 for attn='mla', got {getattr(self, k)}")
            if self.qk_rope_head_dim <= 0 or self.qk_rope_head_dim % 2:
                raise ValueError(f"ModelArgs.qk_rope_head_dim must be a positive even int, got {self.qk_rope_head_dim}")
            return
        if not self.head_dim and self.dim % self.n_heads:
            raise ValueError(f"ModelArgs.n_heads ({self.n_heads}) must divide dim ({self.dim}) when head_dim is 0")
        kv = self.kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise ValueError(f"ModelArgs.n_kv_heads ({self.n_kv_heads}) must be in 1..n_heads and divide "
                             f"n_heads ({self.n_heads}) for attn={self.attn!r}")
        if self.attn == "mha" and kv != self.n_heads:
            raise ValueError(f"ModelArgs.n_kv_heads must equal n_heads for attn='mha', got {self.n_kv_heads}")
        if self.attn == "mqa" and self.n_kv_heads not in (0, 1):  # the kv_heads property forces 1: check the field
            raise ValueError(f"ModelArgs.n_kv_heads must be 1 (or 0) for attn='mqa', got {self.n_kv_heads}")

    def _check_moe(self):
        if self.moe_inter_dim <= 0:
            raise ValueError("ModelArgs.moe_inter_dim must be > 0 when n_routed_experts > 0")
        if not 1 <= self.n_activated_experts <= self.n_routed_experts:
            raise ValueError(f"ModelArgs.n_activated_experts (top-k) must be in 1..n_routed_experts "
                             f"({self.n_routed_experts}), got {self.n_activated_experts}")
        if self.n_expert_groups < 1 or self.n_routed_experts % self.n_expert_groups:
            raise ValueError(f"ModelArgs.n_expert_groups ({self.n_expert_groups}) must be >= 1 and divide "
                             f"n_routed_experts ({self.n_routed_experts})")
        if not 1 <= self.n_limited_groups <= self.n_expert_groups:
            raise ValueError(f"ModelArgs.n_limited_groups must be in 1..n_expert_groups ({self.n_expert_groups}), "
                             f"got {self.n_limited_groups}")
        per_group = self.n_routed_experts // self.n_expert_groups
        if self.n_limited_groups * per_group < self.n_activated_experts:
            # Group-limited routing (V3 §2.1.2) picks top-k only inside the n_limited_groups kept groups.
            raise ValueError(f"ModelArgs.n_activated_experts ({self.n_activated_experts}) must be <= "
                             f"n_limited_groups * experts per group ({self.n_limited_groups} * {per_group})")
        if self.n_expert_groups > 1 and self.gate_bias and per_group < 2:
            # With the bias, a group's score is the sum of its top-2 biased scores (official Gate.forward).
            raise ValueError(f"ModelArgs.n_expert_groups ({self.n_expert_groups}) must leave >= 2 experts per group "
                             f"when gate_bias is true")
        if self.score_func not in SCORE_FUNCS:
            raise ValueError(f"ModelArgs.score_func must be one of {SCORE_FUNCS}, got {self.score_func!r}")
        if not self.route_scale > 0:
            raise ValueError(f"ModelArgs.route_scale must be > 0, got {self.route_scale}")

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    @property
    def kv_heads(self) -> int:
        """KV heads of a classic attention: n_heads (MHA), 1 (MQA) or n_kv_heads (GQA)."""
        if self.attn == "mqa":
            return 1
        return self.n_kv_heads or (self.n_heads if self.attn == "mha" else 0)

    @property
    def attn_head_dim(self) -> int:
        """Per-head width of a classic attention (head_dim, or dim // n_heads when head_dim is 0)."""
        return self.head_dim or self.dim // self.n_heads

    def replace(self, **changes) -> ModelArgs:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"ModelArgs has no field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        if not isinstance(d, dict):
            raise TypeError(f"a config must be a dict, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}")
        return cls(**d)


REQUIRED_FIELDS = tuple(f.name for f in dataclasses.fields(ModelArgs) if f.name != "name")


def available() -> list[str]:
    """Names of the configs shipped with dslab."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".json"))


def _parse(text: str, name: str) -> ModelArgs:
    """A config from JSON text: every ModelArgs field but ``name`` must be present, ``source`` non-empty.

    Being strict here (unlike ``ModelArgs.from_dict``) means a shipped config never silently takes a default.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config {name!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {name!r} must be a JSON object, got {type(data).__name__}")
    if "name" in data:
        raise ValueError(f"config {name!r} must not set 'name' (it is the file name)")
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise ValueError(f"config {name!r} is missing field(s) {missing}")
    if not isinstance(data["source"], str) or not data["source"].strip():
        raise ValueError(f"config {name!r} needs a non-empty 'source' saying where its numbers come from")
    return ModelArgs.from_dict({"name": name, **data})


def load_file(path: str | os.PathLike) -> ModelArgs:
    """Load a config from a JSON file; its name is the file name without ``.json``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    return _parse(path.read_text(encoding="utf-8"), path.stem)


def load(name: str) -> ModelArgs:
    """Load a shipped config by name, e.g. ``load("deepseek-v3-671b")``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    names = available()
    if name not in names:
        raise ValueError(f"unknown config {name!r}; available: {', '.join(names)}")
    return _parse(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"), name)
