"""``kvsim export``: a study's chosen configuration, for kvsim and for the manager.

Two files, each written atomically (temp file, then rename):

* ``config.yaml``: the kvsim config (the schema ``kvsim replay``, ``tune`` and ``serve``
  load), exactly the chosen trial's;
* ``instance_groups.json``: one ``updateInstanceGroup`` request body per group, in the
  admin-API shape of ``manager-api.md`` as kvsim's server reads it:
  ``{"current_version": v, "instance_group": {name, storage_candidates,
  global_quota_group_name, max_instance_count, quota{capacity_blocks | capacity,
  quota_config[]}, cache_config{reclaim_strategy{reclaim_policy, trigger_strategy
  {used_percentage}, delay_before_delete_ms, eviction{policy, params, mode, batch_size}},
  data_storage_strategy, meta_indexer_config}, user_data, version: v + 1}}``.

The quota goes out as ``capacity_blocks`` (kvsim's extension; exactly what was tuned).
For a stock KVCM manager, which counts bytes only, pass ``block_bytes``: the quota is then
``capacity = quota_blocks x block_bytes`` bytes. ``reclaim_policy`` is KVCM's enum
(``POLICY_LRU``, ``POLICY_LFU``, ``POLICY_TTL``; other kvsim policies say
``POLICY_UNSPECIFIED``) and ``eviction`` (kvsim's extension) names the exact policy,
parameters, mode and batch size.

Example:
    >>> from kvsim.config import KVSimConfig
    >>> cfg = KVSimConfig.from_dict({"instance_groups": [{"name": "g", "quota": {"blocks": 10},
    ...     "used_percentage": 0.9, "eviction": {"policy": "lru"}}]})
    >>> body = instance_group_requests(cfg)[0]
    >>> body["current_version"], body["instance_group"]["quota"]["capacity_blocks"]
    (1, 10)
    >>> rs = body["instance_group"]["cache_config"]["reclaim_strategy"]
    >>> rs["reclaim_policy"], rs["trigger_strategy"]
    ('POLICY_LRU', {'used_percentage': 0.9})
    >>> instance_group_requests(cfg, block_bytes=4096)[0]["instance_group"]["quota"]
    {'capacity': 40960, 'quota_config': []}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvsim.config import KVSimConfig, atomic_write_text

__all__ = ["export_study", "instance_group_requests"]


RECLAIM_POLICY = {"lru": "POLICY_LRU", "lfu": "POLICY_LFU", "ttl": "POLICY_TTL"}
STORAGE_TYPE_ENUM = {"file": "ST_NFS", "hf3fs": "ST_3FS", "mooncake": "ST_MOONCAKE",
                     "pace": "ST_TAIRMEMPOOL", "memory": "ST_DUMMY"}  # fmt: skip


def instance_group_requests(config: KVSimConfig, *, block_bytes: int = 0
                            ) -> list[dict[str, Any]]:
    """``updateInstanceGroup`` bodies for every group of ``config``.

    Args:
        config: the chosen configuration (quotas in blocks or bytes).
        block_bytes: when given, block quotas go out in bytes (``capacity``) for a
            manager without ``capacity_blocks``; 0 = as blocks.
    """
    types = {s.name: s.type for s in config.storages}
    out = []
    for g in config.groups:
        quota: dict[str, Any]
        if g.quota_bytes:
            quota, amount = {"capacity": g.quota_bytes}, g.quota_bytes
        elif block_bytes > 0:
            quota = {"capacity": g.quota_blocks * block_bytes}
            amount = g.quota_blocks * block_bytes
        else:
            quota, amount = {"capacity_blocks": g.quota_blocks}, g.quota_blocks
        cand_types = list(dict.fromkeys(types[c] for c in g.storage_candidates if c in types))
        # a per-type cap is in the same unit as the quota; only bytes have one in KVCM
        quota["quota_config"] = ([{"storage_type": STORAGE_TYPE_ENUM[t], "capacity": amount}
                                  for t in cand_types] if "capacity" in quota else [])
        out.append({
            "current_version": g.version,
            "instance_group": {
                "name": g.name,
                "storage_candidates": list(g.storage_candidates),
                "global_quota_group_name": g.name,
                "max_instance_count": g.max_instance_count,
                "quota": quota,
                "cache_config": {
                    "reclaim_strategy": {
                        "reclaim_policy": RECLAIM_POLICY.get(g.eviction.policy,
                                                             "POLICY_UNSPECIFIED"),
                        "trigger_strategy": {"used_percentage": g.used_percentage},
                        "delay_before_delete_ms": g.delay_before_delete_ms,
                        "eviction": {"policy": g.eviction.policy,
                                     "params": dict(g.eviction.params),
                                     "mode": g.eviction.mode,
                                     "batch_size": g.eviction.batch_size},
                    },
                    "data_storage_strategy": "CPS_UNSPECIFIED",
                    "meta_indexer_config": {},
                },
                "user_data": g.user_data,
                "version": g.version + 1,
            },
        })
    return out


def export_study(target: str | Path, out_dir: Path, *, study_name: str | None = None,
                 trial: int | None = None, block_bytes: int = 0) -> dict[str, Any]:
    """Write ``config.yaml`` and ``instance_groups.json`` of a study's chosen trial.

    Args:
        target: a study directory (from ``kvsim tune``) or an Optuna storage URL.
        out_dir: where to write.
        study_name: the study in a storage URL (default ``kvsim``; a directory knows it).
        trial: export this trial number instead of the chosen one.
        block_bytes: write block quotas in bytes, ``quota_blocks x block_bytes`` (for a
            manager without ``capacity_blocks``); 0 = in blocks.

    Returns:
        The trial number, its predicted figures and the written paths.
    """
    import optuna

    from kvsim.optimizer.tune import chosen_trial, load_study_dir

    study, _meta = load_study_dir(target, study_name)
    if trial is None:
        t = chosen_trial(study)
    else:
        found = [x for x in study.trials if x.number == trial]
        if not found or found[0].state != optuna.trial.TrialState.COMPLETE:
            raise ValueError(f"trial {trial} is not a complete trial of the study")
        t = found[0]
    cfg = KVSimConfig.from_dict(t.user_attrs["config"], source=f"trial {t.number}")
    out_dir = Path(out_dir)
    cfg_path = out_dir / "config.yaml"
    json_path = out_dir / "instance_groups.json"
    bodies = instance_group_requests(cfg, block_bytes=block_bytes)
    cfg.save(cfg_path)
    atomic_write_text(json_path, json.dumps(bodies, indent=2) + "\n")
    predicted = {k: t.user_attrs.get(k) for k in ("token_hit_rate", "hit_tokens",
                                                   "capacity_blocks", "quotas", "net_cost")}
    return {"trial": t.number, "predicted": predicted, "files": [cfg_path, json_path]}
