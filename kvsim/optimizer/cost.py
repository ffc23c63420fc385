"""The cost model: what a cached token costs to keep and what a hit saves.

Three figures, all plain frozen dataclasses:

* :class:`ModelShape` gives the KV bytes of one token: ``layers x per-layer width x
  dtype bytes``, where the per-layer width is ``2 x kv_heads x head_dim`` (a K and a V
  vector per KV head) for ordinary attention, or the compressed latent width
  (``kv_lora_rank + qk_rope_head_dim``) for multi-head latent attention (MLA, one latent
  vector per token and layer, no separate K and V).
* :class:`StoragePrice` is a price per GB-hour per storage tier (GB = 10**9 bytes), keyed
  by the storage ``type`` of the config (``memory``, ``file``, ``hf3fs``, ...).
* :class:`GpuPrice` turns a hit token into GPU time not spent on prefill: one token of
  prefill costs ``1 / prefill_tokens_per_s`` GPU-seconds, worth
  ``gpu_price_per_hour / 3600`` dollars per GPU-second.

:class:`CostModel` combines them. Over a replay that spans ``duration_s`` seconds, a
cache of ``capacity_blocks`` blocks of ``block_size`` tokens costs
``capacity_blocks x block_size x bytes_per_token / 1e9 x price_per_gb_hour x
duration_s / 3600`` (the capacity is paid for whether it is full or not), and the
``hit_tokens`` it serves save ``hit_tokens x dollars_per_hit_token``. The *net cost*
(:meth:`CostModel.net_cost`) is storage minus savings: negative when the cache pays for
itself. ``kvsim tune --objective cost`` minimises it.

Example:
    >>> shape = ModelShape(layers=32, kv_heads=8, head_dim=128, dtype_bytes=2)
    >>> shape.bytes_per_token
    131072
    >>> ModelShape.preset("deepseek-v3").bytes_per_token   # MLA: 61 x (512 + 64) x 2
    70272
    >>> round(GpuPrice(prefill_tokens_per_s=10_000, gpu_price_per_hour=3.6).dollars_per_token, 15)
    1e-07
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRESETS", "CostModel", "GpuPrice", "ModelShape", "StoragePrice"]

GB = 10**9


@dataclass(frozen=True)
class ModelShape:
    """The attention shape that decides the KV bytes of one token.

    Attributes:
        layers: transformer layers holding a KV cache.
        kv_heads: key/value heads per layer (the GQA group count; ignored with MLA).
        head_dim: dimension of one head (ignored with MLA).
        dtype_bytes: bytes per element (2 for bf16/fp16, 1 for fp8).
        mla_latent_dim: per-token latent width for MLA models (``kv_lora_rank +
            qk_rope_head_dim``, 512 + 64 in DeepSeek-V3); 0 = ordinary attention.

    Example:
        >>> ModelShape(layers=80, kv_heads=8, head_dim=128, dtype_bytes=2).bytes_per_token
        327680
        >>> ModelShape(layers=2, kv_heads=1, head_dim=4, mla_latent_dim=10).bytes_per_token
        40
    """

    layers: int
    kv_heads: int = 0
    head_dim: int = 0
    dtype_bytes: int = 2
    mla_latent_dim: int = 0

    def __post_init__(self) -> None:
        if self.layers <= 0 or self.dtype_bytes <= 0:
            raise ValueError("layers and dtype_bytes must be positive")
        if self.mla_latent_dim <= 0 and (self.kv_heads <= 0 or self.head_dim <= 0):
            raise ValueError("kv_heads and head_dim must be positive (or give mla_latent_dim)")

    @property
    def width(self) -> int:
        """Elements per token and layer: ``2 x kv_heads x head_dim``, or the MLA latent."""
        return self.mla_latent_dim if self.mla_latent_dim > 0 else 2 * self.kv_heads * self.head_dim

    @property
    def bytes_per_token(self) -> int:
        """KV bytes of one token over all layers."""
        return self.layers * self.width * self.dtype_bytes

    def block_bytes(self, block_size: int) -> int:
        """KV bytes of one block of ``block_size`` tokens.

        Example:
            >>> PRESETS["llama3-8b"].block_bytes(16)
            2097152
        """
        return self.bytes_per_token * block_size

    @staticmethod
    def preset(name: str) -> ModelShape:
        """A named shape from :data:`PRESETS`; ``KeyError`` lists the names."""
        try:
            return PRESETS[name]
        except KeyError:
            raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}"
                           ) from None


PRESETS: dict[str, ModelShape] = {
    "llama3-8b": ModelShape(layers=32, kv_heads=8, head_dim=128, dtype_bytes=2),
    "llama3-70b": ModelShape(layers=80, kv_heads=8, head_dim=128, dtype_bytes=2),
    "qwen2.5-7b": ModelShape(layers=28, kv_heads=4, head_dim=128, dtype_bytes=2),
    "deepseek-v3": ModelShape(layers=61, mla_latent_dim=512 + 64, dtype_bytes=2),
}


@dataclass(frozen=True)
class StoragePrice:
    """Dollars per GB-hour (GB = 1e9 bytes) by storage tier.

    Attributes:
        per_gb_hour: price per tier name (a config storage ``type``).
        default_tier: tier of a group with no storage candidates.

    Example:
        >>> p = StoragePrice({"memory": 0.01, "file": 0.0001})
        >>> p.price("file"), p.price(None)
        (0.0001, 0.01)
    """

    per_gb_hour: Mapping[str, float] = field(default_factory=lambda: {"memory": 0.005})
    default_tier: str = "memory"

    def price(self, tier: str | None) -> float:
        """The price of ``tier`` (``None``: the default tier)."""
        name = tier or self.default_tier
        if name not in self.per_gb_hour:
            raise KeyError(f"no storage price for tier {name!r} (priced: "
                           f"{', '.join(sorted(self.per_gb_hour))})")
        return float(self.per_gb_hour[name])


@dataclass(frozen=True)
class GpuPrice:
    """What one prefill token costs on the GPU.

    Attributes:
        prefill_tokens_per_s: prefill throughput of one GPU (tokens per second).
        gpu_price_per_hour: dollars per GPU-hour.
    """

    prefill_tokens_per_s: float = 10_000.0
    gpu_price_per_hour: float = 2.0

    @property
    def gpu_seconds_per_token(self) -> float:
        """GPU-seconds of prefill one hit token saves."""
        return 1.0 / self.prefill_tokens_per_s

    @property
    def dollars_per_token(self) -> float:
        """Dollars of GPU time one hit token saves."""
        return self.gpu_seconds_per_token * self.gpu_price_per_hour / 3600.0


@dataclass(frozen=True)
class CostModel:
    """Storage cost of capacity against GPU savings of hits.

    Example:
        >>> m = CostModel(ModelShape(layers=32, kv_heads=8, head_dim=128),
        ...               StoragePrice({"memory": 1.0}), GpuPrice(1000.0, 3.6))
        >>> # 1000 blocks x 16 tokens x 131072 B = 2.097152 GB for one hour at $1/GB-h
        >>> round(m.storage_cost(1000, 16, 3600.0), 6)
        2.097152
        >>> round(m.savings(1_000_000), 9)   # 1e6 tokens x 1e-3 GPU-s x $0.001/GPU-s
        1.0
        >>> round(m.net_cost(1000, 16, 3600.0, 1_000_000), 6)
        1.097152
    """

    shape: ModelShape = field(default_factory=lambda: PRESETS["llama3-8b"])
    storage: StoragePrice = field(default_factory=StoragePrice)
    gpu: GpuPrice = field(default_factory=GpuPrice)

    def storage_cost(self, capacity_blocks: int, block_size: int, duration_s: float,
                     tier: str | None = None) -> float:
        """Dollars to hold ``capacity_blocks`` blocks for ``duration_s`` seconds."""
        gb = capacity_blocks * self.shape.block_bytes(block_size) / GB
        return gb * self.storage.price(tier) * duration_s / 3600.0

    def savings(self, hit_tokens: int) -> float:
        """Dollars of prefill GPU time saved by ``hit_tokens`` hit tokens."""
        return hit_tokens * self.gpu.dollars_per_token

    def net_cost(self, capacity_blocks: int, block_size: int, duration_s: float,
                 hit_tokens: int, tier: str | None = None) -> float:
        """Storage cost minus savings (negative: the cache pays for itself)."""
        return self.storage_cost(capacity_blocks, block_size, duration_s, tier) \
            - self.savings(hit_tokens)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (for study metadata and reports)."""
        return {
            "shape": {"layers": self.shape.layers, "kv_heads": self.shape.kv_heads,
                      "head_dim": self.shape.head_dim, "dtype_bytes": self.shape.dtype_bytes,
                      "mla_latent_dim": self.shape.mla_latent_dim},
            "bytes_per_token": self.shape.bytes_per_token,
            "storage_per_gb_hour": dict(self.storage.per_gb_hour),
            "default_tier": self.storage.default_tier,
            "prefill_tokens_per_s": self.gpu.prefill_tokens_per_s,
            "gpu_price_per_hour": self.gpu.gpu_price_per_hour,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> CostModel:
        """Inverse of :meth:`to_dict`.

        Example:
            >>> m = CostModel()
            >>> CostModel.from_dict(m.to_dict()) == m
            True
        """
        return CostModel(
            ModelShape(**d["shape"]),
            StoragePrice(dict(d["storage_per_gb_hour"]), d.get("default_tier", "memory")),
            GpuPrice(float(d["prefill_tokens_per_s"]), float(d["gpu_price_per_hour"])),
        )
