"""Their benchmarking: the benchmark recipe (synthetic rows of their mock's `seq_len`, no
checkpoints or validation, nsys windows) and the `benchmark:` section and mock micro-batches of
their fine-tunes in `llm_benchmark`."""

from __future__ import annotations

from ._aliases import TARGET_KEY
from ._aliases_pretrain import MOCK_DATA
from ._translator_base import _TranslatorBase


class _BenchmarkPasses(_TranslatorBase):
    def _is_benchmark(self) -> bool:
        """Their benchmark recipe (by `recipe:`, or a `benchmark:` section without one)."""
        return self.recipe == "benchmark.llm" or (not self.recipe and "benchmark" in self.data)

    def benchmark_data(self) -> None:
        """Before the targets pass: their benchmark recipe's mock dataset is its `seq_len`; in
        their fine-tune recipe, a `benchmark:` section (which it never reads) goes, and their
        mock's micro-batch of `local_batch_size` rows is the loader's own."""
        if not self._is_benchmark():
            self._finetune_benchmarking()
            return
        dataset = self.data.pop("dataset", None)
        if isinstance(dataset, dict) and "seq_len" in dataset:
            self.section("benchmark").setdefault("seq_length", dataset["seq_len"])
            self.move("dataset.seq_len", "benchmark.seq_length")
        elif dataset is not None:
            self.fail("dataset", "benchmark.llm makes synthetic rows; give benchmark.seq_length")

    def _finetune_benchmarking(self) -> None:
        data = self.data
        if "benchmark" in data:
            data.pop("benchmark")
            self.notes.append(
                f"{self.at('benchmark')}: benchmark: dropped (their fine-tune recipe never reads "
                "it; time training steps with `automodel benchmark llm`)"
            )
        dataset, steps = data.get("dataset"), data.get("step_scheduler")
        if not (isinstance(dataset, dict) and dataset.get(TARGET_KEY) == MOCK_DATA):
            return
        local = steps.get("local_batch_size") if isinstance(steps, dict) else None
        if "batch_size" in dataset and dataset["batch_size"] == local:
            dataset.pop("batch_size")  # else the alias refuses it
            self.note(
                "dataset",
                f"batch_size: {local} dropped (their mock yields micro-batches of "
                "step_scheduler.local_batch_size rows; the loader batches as many here)",
            )

    def benchmark(self) -> None:
        """Their benchmark recipe: synthetic data of `seq_len` tokens, no checkpoints, nsys."""
        data = self.data
        if not self._is_benchmark():
            return
        bench = self.section("benchmark")
        for name in (
            "dataloader",
            "validation_dataset",
            "validation_dataloader",
            "packed_sequence",
        ):
            if data.pop(name, None) is not None:
                self.note(name, "dropped (benchmark.llm makes its own synthetic batches)")
        if data.pop("checkpoint", None) is not None:
            self.note("checkpoint", "dropped (benchmark.llm writes no checkpoints)")
        steps = self.section("step_scheduler")
        for key in ("ckpt_every_steps", "val_every_steps"):
            if steps.pop(key, None) is not None:
                self.note(f"step_scheduler.{key}", "dropped (no checkpoints or validation)")
        start, end = bench.pop("nsys_start", -1), bench.pop("nsys_end", -1)
        bench.pop("nsys_ranks", None)
        if start not in (-1, None) or end not in (-1, None):
            self.fail(
                "benchmark.nsys_start",
                "nsys ranges are not supported; profile with benchmark.profile: "
                "{start_step: ..., end_step: ...} (the torch profiler)",
            )
        if bench.pop("num_nodes", None) is not None:
            self.note("benchmark", "num_nodes dropped (the launch says how many nodes)")
