"""`translate`: their config data rewritten into ours, pass by pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError
from ._translate_benchmark import _BenchmarkPasses
from ._translate_data import _DataPasses
from ._translate_features import _FeaturePasses
from ._translate_moe import _MoePasses
from ._translate_optim import _OptimizerPasses
from ._translate_parallel import _ParallelPasses
from ._translate_retrieval import _RetrievalPasses
from ._translate_sections import _SectionPasses
from ._translate_targets import _TargetPasses


@dataclass
class Translation:
    """Our data, where each key came from, what changed (path -> note) and notes to print."""

    data: dict[str, Any]
    where: dict[str, str]
    changed: dict[str, str]
    notes: list[str]
    recipe: str | None = None  # our recipe name from `recipe:`


def translate(
    data: dict[str, Any], where: Mapping[str, str], file: str = "", world_size: int | None = None
) -> Translation:
    """Rewrite their config data into ours (see the package docstring)."""
    t = _Translator(data, dict(where), file, world_size)
    t.run()
    if t.problems:
        raise ConfigError(t.problems)
    return Translation(t.data, t.where, t.changed, t.notes, t.recipe)


class _Translator(
    _RetrievalPasses,
    _MoePasses,
    _OptimizerPasses,
    _TargetPasses,
    _SectionPasses,
    _BenchmarkPasses,
    _DataPasses,
    _FeaturePasses,
    _ParallelPasses,
):
    # -- the passes ----------------------------------------------------------------------------
    def run(self) -> None:
        self.top_level()
        self.benchmark_data()  # before the targets: their mock dataset is only a length there
        self.retrieval()  # first: it moves their retrieval arguments out of their targets
        self.moe()  # before the targets: it reads their model's backend, which they drop
        self.lora_selection()  # before the targets: their PeftConfig's selection rules
        self.optimizer()
        self.vlm_collators()  # before the targets: they drop the collate's target
        self.collate_padding()  # the same
        self.targets(self.data, "")
        self.sections()
        self.mixed_precision()  # after sections: their FSDP2Config object merges into ours
        self.features()
        self.renames()
        self.checkpoint_enabled()
        self.kd()
        self.benchmark()
        self.loaders()
        self.step_scheduler()
        self.pipeline()
        self.typos()
