"""Convert Tair KVCM optimizer configs (``optimizer_startup_config_load.json``) to and
from kvsim's config schema: ``kvsim config import`` / ``kvsim config export``.

KVCM's optimizer config: ``trace_file_path``, ``output_result_path``,
``eviction_params{eviction_mode, eviction_batch_size_per_instance}`` and
``instance_groups[{group_name, quota_capacity (GiB, -1 unlimited), used_percentage,
ttl_config, storages[{unique_name, storage_type, band_width_mbps, capacity (GiB, -1
unlimited)}], instances[{instance_id, block_size,
bytes_per_token, eviction_policy_type, eviction_policy_params}]}]``. kvsim's: a group per
instance group (quota in bytes, eviction policy, mode and batch size), a storage per
storage (``capacity_bytes``), an instance per instance with one location spec of
``block_size x bytes_per_token`` bytes. What kvsim has no counterpart for (tier flows,
hierarchical eviction, bandwidths, paths) is listed in the returned notes, not dropped
silently.

Example:
    >>> cfg, notes = import_kvcm({"eviction_params": {"eviction_mode": 1},
    ...     "instance_groups": [{"group_name": "g", "quota_capacity": 1, "used_percentage": 0.9,
    ...         "storages": [{"unique_name": "p0", "storage_type": "pace", "capacity": 1}],
    ...         "instances": [{"instance_id": "i", "block_size": 16, "bytes_per_token": 64,
    ...                        "eviction_policy_type": "lru"}]}]})
    >>> g = cfg["instance_groups"][0]
    >>> g["quota"]["bytes"], g["eviction"]["mode"], cfg["instances"][0]["location_spec_infos"]
    (1073741824, 'group_rough', [{'name': 'default', 'size': 1024}])
    >>> export_kvcm(cfg)["instance_groups"][0]["instances"][0]["bytes_per_token"]
    64
"""

from __future__ import annotations

from typing import Any

__all__ = ["KvcmConfigError", "export_kvcm", "import_kvcm", "is_kvcm_config"]

GIB = 1 << 30
MAX_BYTES = 1 << 62
_MODES = {1: "group_rough", 2: "instance_rough", 3: "instance_precise"}
_MODE_NUM = {v: k for k, v in _MODES.items()}
_POLICIES = ("lru", "random_lru", "leaf_aware_lru", "ttl")
_TYPES = {"pace": "pace", "hf3fs": "hf3fs", "vcns_hf3fs": "hf3fs", "mooncake": "mooncake",
          "file": "file", "nfs": "file", "dummy": "memory", "memory": "memory"}  # fmt: skip
_IGNORED_GROUP = ("tier_flows", "hierarchical_eviction_enabled", "tier_write_mode",
                  "enable_promote", "ttl_refresh_on_read", "ttl_config")  # fmt: skip


class KvcmConfigError(ValueError):
    """A KVCM optimizer config kvsim cannot convert; the message names the field."""


def is_kvcm_config(data: Any) -> bool:
    """Whether ``data`` looks like a KVCM optimizer config (groups with ``group_name``)."""
    groups = data.get("instance_groups") if isinstance(data, dict) else None
    return isinstance(groups, list) and any(isinstance(g, dict) and "group_name" in g
                                            for g in groups)


def _num(d: dict[str, Any], name: str, where: str, default: float | None = None, *,
         low: float = 0.0) -> float:
    v = d.get(name, default)
    if v is None:
        raise KvcmConfigError(f"{where}.{name}: required")
    if isinstance(v, bool) or not isinstance(v, int | float) or v < low:
        raise KvcmConfigError(f"{where}.{name}: expected a number >= {low}, got {v!r}")
    return float(v)


def _gib_bytes(d: dict[str, Any], name: str, where: str, notes: list[str],
               default: float | None = None) -> int:
    """A KVCM capacity in GiB as bytes, 0 for unlimited: KVCM reads a negative value
    (``-1``) as unlimited; a value past kvsim's byte bound (2**62, e.g. the
    ``1e10`` GiB of KVCM's own test config) can never bind and is unlimited too."""
    v = d.get(name, default)
    if isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
        return 0
    gib = _num(d, name, where, default)
    if gib * GIB >= MAX_BYTES:
        notes.append(f"{where}.{name}: {gib:g} GiB is past kvsim's bound of 2**62 bytes: "
                     f"unlimited")
        return 0
    return int(gib * GIB)


def _str(d: dict[str, Any], name: str, where: str, default: str | None = None) -> str:
    v = d.get(name, default)
    if not isinstance(v, str) or not v:
        raise KvcmConfigError(f"{where}.{name}: expected a non-empty string, got {v!r}")
    return v


def _list(d: dict[str, Any], name: str, where: str) -> list[dict[str, Any]]:
    v = d.get(name) or []
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise KvcmConfigError(f"{where}.{name}: expected a list of objects")
    return v


def import_kvcm(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A KVCM optimizer config as a kvsim config mapping, plus notes on what kvsim does not
    model.

    Raises:
        KvcmConfigError: a malformed field (named), or instances of one group with
            different eviction policies (kvsim evicts per group).
    """
    if not isinstance(data, dict):
        raise KvcmConfigError("the config must be a JSON object")
    notes: list[str] = []
    ep = data.get("eviction_params") or {}
    if not isinstance(ep, dict):
        raise KvcmConfigError("eviction_params: expected an object")
    mode_n = int(_num(ep, "eviction_mode", "eviction_params", 0))
    if mode_n not in (0, *_MODES):
        raise KvcmConfigError(f"eviction_params.eviction_mode: {mode_n} is not 0..3")
    mode = _MODES.get(mode_n, "group_precise")
    batch = int(_num(ep, "eviction_batch_size_per_instance", "eviction_params", 100, low=1))
    if isinstance(data.get("trace_replay"), dict):
        notes.append("trace_replay: kvsim's request row reads, then writes at the same "
                     "time (KVCM's write_delay_ns is not modelled; mode is read from the "
                     "rows' type)")
    for k in ("trace_file_path", "output_result_path"):
        if data.get(k):
            notes.append(f"{k} ({data[k]}) is not part of kvsim's config: pass the trace "
                         f"and --out to kvsim replay")
    storages: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    for gi, g in enumerate(_list(data, "instance_groups", "")):
        w = f"instance_groups[{gi}]"
        name = _str(g, "group_name", w)
        up = _num(g, "used_percentage", w, 1.0)
        if up > 1:
            notes.append(f"{w}.used_percentage {up} > 1 (never reclaim early): kvsim's "
                         f"replay uses 1")
            up = 1.0
        if up <= 0:
            raise KvcmConfigError(f"{w}.used_percentage: must be > 0, got {up}")
        ttl_used = any(isinstance(i, dict) and i.get("eviction_policy_type") == "ttl"
                       for i in g.get("instances") or [])
        for k in _IGNORED_GROUP:
            if g.get(k) and not (ttl_used and k == "ttl_config"):
                notes.append(f"{w}.{k}: not modelled by kvsim (ignored)")
        cands = []
        for si, s in enumerate(_list(g, "storages", w)):
            sw = f"{w}.storages[{si}]"
            stype = _str(s, "storage_type", sw)
            if stype not in _TYPES:
                raise KvcmConfigError(f"{sw}.storage_type: {stype!r} is not one of "
                                      f"{', '.join(_TYPES)}")
            sname = _str(s, "unique_name", sw)
            storages.append({"name": sname, "type": _TYPES[stype],
                             "capacity_bytes": _gib_bytes(s, "capacity", sw, notes, 0)})
            cands.append(sname)
            if s.get("band_width_mbps"):
                notes.append(f"{sw}.band_width_mbps: kvsim replay has no bandwidth (see "
                             f"kvsim simulate's timing section)")
        policy, params = "", dict[str, Any]()
        for ii, inst in enumerate(_list(g, "instances", w)):
            iw = f"{w}.instances[{ii}]"
            p = _str(inst, "eviction_policy_type", iw, "lru")
            if p not in _POLICIES:
                raise KvcmConfigError(f"{iw}.eviction_policy_type: {p!r} is not one of "
                                      f"{', '.join(_POLICIES)}")
            pp = inst.get("eviction_policy_params") or {}
            if not isinstance(pp, dict):
                raise KvcmConfigError(f"{iw}.eviction_policy_params: expected an object")
            this = {"sample_rate": pp["sample_rate"]} if (
                p == "random_lru" and "sample_rate" in pp) else {}
            if p == "ttl":
                tc = g.get("ttl_config")
                src, sw_ = (tc, f"{w}.ttl_config") if isinstance(tc, dict) else (g, w)
                if src.get("default_block_ttl_seconds"):
                    this = {"ttl_s": _num(src, "default_block_ttl_seconds", sw_)}
                if pp.get("fallback_on_pressure") is False:
                    notes.append(f"{iw}.eviction_policy_params.fallback_on_pressure: "
                                 f"false (pure TTL) is not modelled: kvsim's ttl falls "
                                 f"back to LRU under pressure")
            elif p in ("lru", "leaf_aware_lru") and isinstance(
                    pp.get("sample_rate"), int | float) and pp["sample_rate"] < 1:
                notes.append(f"{iw}.eviction_policy_params.sample_rate "
                             f"{pp['sample_rate']}: kvsim's {p} is exact (KVCM samples)")
            if policy and (p, this) != (policy, params):
                raise KvcmConfigError(f"{iw}.eviction_policy_type: {p} differs from the "
                                      f"group's first instance ({policy}); kvsim evicts per "
                                      f"group: split the group")
            policy, params = p, this
            bs = int(_num(inst, "block_size", iw, low=1))
            bpt = int(_num(inst, "bytes_per_token", iw, 0))
            instances.append({"instance_id": _str(inst, "instance_id", iw), "group": name,
                              "block_size": bs,
                              "location_spec_infos": [{"name": "default",
                                                       "size": max(1, bs * bpt)}]})
        groups.append({"name": name, "quota": {"bytes": _gib_bytes(g, "quota_capacity", w, notes)},
                       "used_percentage": up, "storage_candidates": cands,
                       "eviction": {"policy": policy or "lru", "params": params, "mode": mode,
                                    "batch_size": batch}})
    if not groups:
        raise KvcmConfigError("instance_groups: at least one group is needed")
    return {"storages": storages, "instance_groups": groups, "instances": instances}, notes


def _gib(n_bytes: Any) -> float:
    """kvsim bytes as KVCM GiB; 0 (kvsim's unlimited) is KVCM's -1."""
    return int(n_bytes) / GIB if int(n_bytes) > 0 else -1.0


def export_kvcm(cfg: dict[str, Any]) -> dict[str, Any]:
    """A kvsim config mapping (``KVSimConfig.to_dict()``) as a KVCM optimizer config.

    Raises:
        KvcmConfigError: a group whose policy or mode KVCM's optimizer lacks, or groups
            with different modes or batch sizes (KVCM has one setting for all).
    """
    groups = cfg.get("instance_groups") or []
    if not groups:
        raise KvcmConfigError("instance_groups: nothing to export")
    modes = {g.get("eviction", {}).get("mode", "group_precise") for g in groups}
    batches = {g.get("eviction", {}).get("batch_size", 100) for g in groups}
    if len(modes) > 1 or len(batches) > 1:
        raise KvcmConfigError("instance_groups[*].eviction: KVCM's optimizer has one mode and "
                              "batch size for every group")
    mode = modes.pop()
    if mode not in _MODE_NUM:
        raise KvcmConfigError(f"eviction.mode {mode!r}: KVCM's optimizer has only "
                              f"{', '.join(_MODE_NUM)}")
    st_by_name = {s["name"]: s for s in cfg.get("storages") or []}
    out_groups = []
    for gi, g in enumerate(groups):
        ev = g.get("eviction", {})
        pol = ev.get("policy", "lru")
        if pol not in _POLICIES:
            raise KvcmConfigError(f"instance_groups[{gi}].eviction.policy: {pol!r} is not in "
                                  f"KVCM's optimizer ({', '.join(_POLICIES)})")
        params = ev.get("params") or {}
        q = g.get("quota") or {}
        if q.get("blocks"):
            raise KvcmConfigError(f"instance_groups[{gi}].quota.blocks: KVCM's optimizer "
                                  f"takes a quota in bytes (GiB)")
        insts = []
        for inst in cfg.get("instances") or []:
            if inst.get("group", "default") != g["name"]:
                continue
            bs = int(inst.get("block_size", 16))
            size = sum(int(s.get("size", 0)) for s in inst.get("location_spec_infos") or [])
            insts.append({"instance_id": inst["instance_id"], "block_size": bs,
                          "bytes_per_token": size // bs if bs else 0,
                          "eviction_policy_type": pol,
                          "eviction_policy_params": {k: v for k, v in params.items()
                                                     if k == "sample_rate"}})
        og: dict[str, Any] = {
            "group_name": g["name"], "quota_capacity": _gib(q.get("bytes", 0)),
            "used_percentage": g.get("used_percentage", 1.0),
            "hierarchical_eviction_enabled": False,
            "storages": [{"unique_name": n, "storage_type": st_by_name.get(n, {}).get(
                              "type", "file"),
                          "band_width_mbps": 0,
                          "capacity": _gib(st_by_name.get(n, {}).get("capacity_bytes", 0))}
                         for n in g.get("storage_candidates") or []],
            "instances": insts}
        ttl_s = int(params["ttl_s"]) if pol == "ttl" and "ttl_s" in params else 0
        if ttl_s:
            og["default_block_ttl_seconds"] = ttl_s  # KVCM's older loader
        og["ttl_config"] = {"default_block_ttl_seconds": ttl_s, "refresh_on_read": True}
        out_groups.append(og)
    return {"eviction_params": {"eviction_mode": _MODE_NUM[mode],
                                "eviction_batch_size_per_instance": int(batches.pop())},
            "instance_groups": out_groups}


# ---------------------------------------------------------------------- CLI
def _config_group() -> Any:
    import json
    from pathlib import Path

    import click

    from kvsim.config import ConfigError, KVSimConfig, atomic_write_text

    def load_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except OSError as e:
            raise click.ClickException(f"{path}: cannot read: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise click.ClickException(f"{path}:{e.lineno}: not JSON: {e.msg}") from None

    @click.group("config")
    def config_group() -> None:
        """Convert configs between kvsim's schema and Tair KVCM's optimizer's."""

    @config_group.command("import")
    @click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
                  required=True, help="kvsim config to write (.yaml or .json).")
    def import_cmd(src: Path, out: Path) -> None:
        """Read a KVCM optimizer config (optimizer_startup_config_load.json), write it in
        kvsim's schema; what kvsim does not model is listed on stderr.

        \b
        Example:
          kvsim config import optimizer_startup_config_load.json -o cache.yaml
          kvsim replay trace.jsonl --config cache.yaml
        """
        try:
            d, notes = import_kvcm(load_json(src))
            cfg = KVSimConfig.from_dict(d, source=str(src))
        except (KvcmConfigError, ConfigError) as e:
            raise click.ClickException(f"{src}: {e}") from None
        cfg.save(out)
        for n in notes:
            click.echo(f"note: {n}", err=True)
        click.echo(f"wrote {out}: {len(cfg.groups)} groups, {len(cfg.storages)} storages, "
                   f"{len(cfg.instances)} instances", err=True)

    @config_group.command("export")
    @click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
                  required=True, help="KVCM optimizer config to write (JSON).")
    def export_cmd(src: Path, out: Path) -> None:
        """Read a kvsim config, write it as a KVCM optimizer config.

        \b
        Example:
          kvsim config export cache.yaml -o optimizer_startup_config_load.json
        """
        try:
            cfg = KVSimConfig.load(src)
            d = export_kvcm(cfg.to_dict())
        except (KvcmConfigError, ConfigError) as e:
            raise click.ClickException(f"{src}: {e}") from None
        atomic_write_text(out, json.dumps(d, indent=4) + "\n")
        click.echo(f"wrote {out}", err=True)

    return config_group


config_group = _config_group()
