"""The translator's target pass: every `nemo_automodel.*` target and its arguments, in ours."""

from __future__ import annotations

import re
from typing import Any

from .._errors import ConfigError, did_you_mean
from ._aliases import (
    _COLLATER,
    _THD_COLLATER,
    NEMO_PREFIX,
    TARGET_ALIASES,
    TARGET_KEY,
    Alias,
    alias_for,
    their_arguments,
)
from ._translator_base import _TranslatorBase


class _TargetPasses(_TranslatorBase):
    def targets(self, node: Any, path: str) -> None:
        """Rewrite every `nemo_automodel.*` target with its arguments, then those below it."""
        if isinstance(node, list):
            for i, item in enumerate(node):
                self.targets(item, f"{path}.{i}")
            return
        if not isinstance(node, dict):
            return
        self.target(node, path)  # first: it may drop an argument that names a target of theirs
        for key, value in list(node.items()):
            full = f"{path}.{key}" if path else key
            if key.endswith("_fn") and value in (_COLLATER, _THD_COLLATER):
                del node[key]  # our dataloader's own collate pads the same way
                self.changed[path] = f"{key}: {value.rsplit('.', 1)[-1]} is the default collate"
            elif key.endswith("_fn") and isinstance(value, str) and value.startswith(NEMO_PREFIX):
                try:
                    node[key] = alias_for(value, key=full, where=self.at(full))
                    self.changed[full] = f"was {value}"
                except ConfigError as e:
                    self.problems.extend(e.problems)
            elif key != TARGET_KEY:
                self.targets(value, full)

    def target(self, node: dict[str, Any], path: str) -> None:
        target = node.get(TARGET_KEY)
        if not (isinstance(target, str) and target.startswith(NEMO_PREFIX)):
            return
        tkey = f"{path}.{TARGET_KEY}" if path else TARGET_KEY
        alias = TARGET_ALIASES.get(target)
        if alias is None:
            try:
                alias_for(target, key=tkey, where=self.at(tkey))
            except ConfigError as e:
                self.problems.extend(e.problems)
            return
        short = target.rsplit(".", 2)[-2] if target.count(".") > 1 else target
        if alias.ours is None:
            del node[TARGET_KEY]
            self.changed[path] = f"was _target_: {target}"
        else:
            node[TARGET_KEY] = alias.ours
            self.changed[tkey] = f"was {target}"
        if alias.note:
            self.note(path, alias.note)
        for their, why in alias.dropped.items():
            if their in node:
                node.pop(their)
                self.note(path, f"{their} dropped ({why})")
        for their, (accepted, instead) in alias.refused.items():
            if their in node:
                if node[their] in accepted:
                    node.pop(their)
                else:
                    self.fail(
                        f"{path}.{their}",
                        f"{short} {their}={node[their]!r} is not supported: {instead}",
                    )
        for their, ours in alias.args.items():
            if their in node:
                node[ours] = node.pop(their)
                self.move(f"{path}.{their}", f"{path}.{ours}")
        limit = node.pop(alias.limit, None) if alias.limit else None
        if limit is not None:
            split = str(node.get("split", "train"))
            where = f"{path}.{alias.limit}"
            rows = _slice_rows(split)
            if rows is not None and int(limit) >= rows:  # the same rows with or without it
                self.note(path, f"{alias.limit}: {limit} dropped (split {split} has {rows} rows)")
            elif "[" in split:
                self.fail(where, f"give either a split slice or {alias.limit}")
            else:
                node["split"] = f"{split}[:{int(limit)}]"
                self.move(where, f"{path}.split", f"{alias.limit}: {limit} is a split slice")
                self.where[f"{path}.split"] = self.at(where)  # the user set the slice there
        self.arg_typos(node, path, alias, target)
        local_json = str(node.get("path", "")).lower().endswith((".json", ".jsonl"))
        if alias.json_unshuffled and local_json and node.get("shuffle_seed") is not None:
            node.pop("shuffle_seed")
            self.note(path, "shuffle_seed dropped (they shuffle Hub and parquet data only)")
        if alias.hf_padding:
            self.hf_padding(node, path)
        if alias.token_windows and isinstance(node.get("seq_length"), int):
            node["seq_length"] += 1  # their inputs plus the last input's target
            self.changed[f"{path}.seq_length"] = "their seq_length + 1 (window tokens)"
        for ours, value in alias.defaults.items():
            if ours not in node:
                node[ours] = value
                self.changed.setdefault(f"{path}.{ours}", "NeMo AutoModel's default, written out")
        for ours, value in alias.section.items():
            node.setdefault(ours, value)
            self.changed.setdefault(f"{path}.{ours}", f"from _target_: {target}")

    def arg_typos(self, node: dict[str, Any], path: str, alias: Alias, target: str) -> None:
        """An argument close to one of their names (and not one of ours): say which."""
        theirs = their_arguments(target)
        for key in list(node):
            if key == TARGET_KEY or key in theirs or key in alias.args.values():  # ours, renamed
                continue
            hint = did_you_mean(key, sorted(theirs))
            # only then look at our signature (importing it): `automodel migrate` stays torch-free
            if hint and not (alias.ours and key in _parameters(alias.ours)):
                self.fail(
                    f"{path}.{key}", f"unknown argument '{key}' (NeMo AutoModel spelling){hint}"
                )

    def hf_padding(self, node: dict[str, Any], path: str) -> None:
        """Their tokenizer-style `padding` / `truncation` (`do_not_pad`, `do_not_truncate`, ...)."""
        if "padding" in node:
            node.pop("padding")
            self.note(path, "padding dropped (batches are padded; padding is masked out)")
        truncation = node.pop("truncation", "do_not_truncate")
        overlong = node.pop("filter_overlong", False)  # their agent traces: drop, not cut
        if overlong:
            if node.get("seq_length") is None:
                self.fail(f"{path}.filter_overlong", "filter_overlong needs seq_length")
            node["truncation"] = "drop"
            self.move(f"{path}.filter_overlong", f"{path}.truncation")
        elif truncation in (True, "longest_first", "only_first"):
            if node.get("seq_length") is None:
                self.fail(f"{path}.truncation", "truncation needs seq_length")
            node["truncation"] = "truncate"
            self.changed[f"{path}.truncation"] = f"was {truncation}"
        elif truncation in (False, None, "do_not_truncate"):
            if node.get("truncate_history"):
                self.fail(
                    f"{path}.truncate_history",
                    "truncate_history without truncation (or filter_overlong) is not "
                    "supported: a trace still too long would be kept whole there; set "
                    "truncation: true",
                )
            elif node.pop("seq_length", None) is not None:  # there it only pads to that length
                self.note(path, "seq_length dropped: without truncation it only pads there")
        else:
            self.fail(f"{path}.truncation", f"truncation {truncation!r} is not supported; use true")


def _slice_rows(split: str) -> int | None:
    """The row count of a split sliced by row numbers (`train[100:356]`: 256), else None."""
    match = re.fullmatch(r"[^\[]+\[(\d*):(\d+)\]", split.replace(" ", ""))
    return None if match is None else int(match[2]) - int(match[1] or 0)


def _parameters(target: str) -> set[str]:
    """The keyword names our target takes (its own module is imported, nothing of theirs)."""
    import importlib
    import inspect

    module, _, name = target.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:  # a classmethod path: module.Class.method
        module, _, owner = module.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), owner)
        except (ImportError, AttributeError):
            return set()
    try:
        return set(inspect.signature(getattr(obj, name)).parameters)
    except (AttributeError, TypeError, ValueError):
        return set()
