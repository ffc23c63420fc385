"""``kvsim export``: a study's chosen configuration, for kvsim and for the manager.

Two files, each written atomically (temp file, then rename):

* ``config.yaml``: the kvsim config (the schema ``kvsim replay``, ``tune`` and ``serve``
  load), exactly the chosen trial's;
* ``instance_groups.json``: one ``updateInstanceGroup`` request body per group, in the
  admin-API shape of ``manager-api.md``: ``{"current_version": v, "instance_group":
  {name, storage_candidates, global_quota_group_name, max_instance_count,
  quota{capacity, quota_config[]}, cache_config{reclaim_strategy{reclaim_policy,
  trigger_strategy{used_percentage}, delay_before_delete_ms}}, user_data, version: v + 1}}``.
  The admin API counts quotas in bytes: ``capacity = quota_blocks x block bytes`` (the
  block bytes of the group's instances, or ``block_bytes``). kvsim's eviction details
  that the admin shape has no field for (mode, batch size, policy parameters, the quota
  in blocks) travel in ``user_data`` as JSON under ``"kvsim"``.

Example:
    >>> from kvsim.config import KVSimConfig
    >>> cfg = KVSimConfig.from_dict({"instance_groups": [{"name": "g", "quota": {"blocks": 10},
    ...     "used_percentage": 0.9, "eviction": {"policy": "lru"}}]})
    >>> body = instance_group_requests(cfg, block_bytes=4096)[0]
    >>> body["current_version"], body["instance_group"]["quota"]["capacity"]
    (1, 40960)
    >>> body["instance_group"]["cache_config"]["reclaim_strategy"]["trigger_strategy"]
    {'used_percentage': 0.9}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvsim.config import KVSimConfig, atomic_write_text

__all__ = ["export_study", "group_block_bytes", "instance_group_requests"]


def group_block_bytes(config: KVSimConfig, group: str) -> int:
    """Bytes of one block in ``group`` from its instances' location specs (0: unknown).

    Raises:
        ValueError: the group's instances have different block sizes in bytes.
    """
    sizes = {s.block_bytes for s in config.instances if s.group == group and s.block_bytes}
    if len(sizes) > 1:
        raise ValueError(f"group {group!r}: instances have different block bytes "
                         f"{sorted(sizes)}; a block quota has no single byte size")
    return sizes.pop() if sizes else 0


def instance_group_requests(config: KVSimConfig, *, block_bytes: int = 0
                            ) -> list[dict[str, Any]]:
    """``updateInstanceGroup`` bodies for every group of ``config``.

    Args:
        config: the chosen configuration (quotas in blocks or bytes).
        block_bytes: bytes per block for groups whose instances do not say.

    Raises:
        ValueError: a block quota whose byte size is unknown.
    """
    types = {s.name: s.type for s in config.storages}
    out = []
    for g in config.groups:
        if g.quota_bytes:
            capacity = g.quota_bytes
        elif g.quota_blocks:
            bb = group_block_bytes(config, g.name) or block_bytes
            if bb <= 0:
                raise ValueError(f"group {g.name!r}: quota of {g.quota_blocks} blocks, but the "
                                 "block size in bytes is unknown: list the group's instances "
                                 "with location_spec_infos, or pass --block-bytes")
            capacity = g.quota_blocks * bb
        else:
            capacity = 0
        cand_types = list(dict.fromkeys(types[c] for c in g.storage_candidates if c in types))
        kvsim_extra = {"quota_blocks": g.quota_blocks, "eviction": {
            "policy": g.eviction.policy, "params": dict(g.eviction.params),
            "mode": g.eviction.mode, "batch_size": g.eviction.batch_size}}
        user: dict[str, Any] = {}
        if g.user_data:
            try:
                parsed = json.loads(g.user_data)
                user = parsed if isinstance(parsed, dict) else {"user_data": g.user_data}
            except json.JSONDecodeError:
                user = {"user_data": g.user_data}
        user["kvsim"] = kvsim_extra
        out.append({
            "current_version": g.version,
            "instance_group": {
                "name": g.name,
                "storage_candidates": list(g.storage_candidates),
                "global_quota_group_name": "",
                "max_instance_count": g.max_instance_count,
                "quota": {"capacity": capacity,
                          "quota_config": [{"storage_type": t, "capacity": capacity}
                                           for t in cand_types]},
                "cache_config": {"reclaim_strategy": {
                    "reclaim_policy": g.eviction.policy,
                    "trigger_strategy": {"used_percentage": g.used_percentage},
                    "delay_before_delete_ms": g.delay_before_delete_ms,
                }},
                "user_data": json.dumps(user, sort_keys=True),
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
        block_bytes: bytes per block where the config's instances do not say (else, when
            the study has a cost model: its bytes per token x the block size).

    Returns:
        The trial number, its predicted figures and the written paths.
    """
    import optuna

    from kvsim.optimizer.tune import TuneSpec, chosen_trial, load_study_dir

    study, _meta = load_study_dir(target, study_name)
    if trial is None:
        t = chosen_trial(study)
    else:
        found = [x for x in study.trials if x.number == trial]
        if not found or found[0].state != optuna.trial.TrialState.COMPLETE:
            raise ValueError(f"trial {trial} is not a complete trial of the study")
        t = found[0]
    cfg = KVSimConfig.from_dict(t.user_attrs["config"], source=f"trial {t.number}")
    if not block_bytes and study.user_attrs.get("spec"):
        spec = TuneSpec.from_dict(study.user_attrs["spec"])
        if spec.cost is not None:
            bs = cfg.replay.block_size or int(study.user_attrs.get("block_size", 0))
            if bs:
                block_bytes = spec.cost.shape.block_bytes(bs)
    out_dir = Path(out_dir)
    cfg_path = out_dir / "config.yaml"
    json_path = out_dir / "instance_groups.json"
    bodies = instance_group_requests(cfg, block_bytes=block_bytes)
    cfg.save(cfg_path)
    atomic_write_text(json_path, json.dumps(bodies, indent=2) + "\n")
    predicted = {k: t.user_attrs.get(k) for k in ("token_hit_rate", "hit_tokens",
                                                   "capacity_blocks", "quotas", "net_cost")}
    return {"trial": t.number, "predicted": predicted, "files": [cfg_path, json_path]}
