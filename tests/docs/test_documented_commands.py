"""Every shell command of the README and the docs is classified in COMMANDS, and runs here.

`_doc_commands.documented_commands()` extracts the commands of the ```bash / ```sh /
```console blocks of README.md, docs/*.md, examples/**/README.md and packages/*/README.md.
COMMANDS classifies each one:

- `Run`: run here as a real subprocess, after the entry's substitutions (a few training steps
  instead of hundreds, an example config for a placeholder), in a temporary working
  directory whose `examples` links to the repository's: the commands' relative config paths
  read the repository while their outputs (`runs/...`) land in the temporary directory.
  Commands of one `group` share that directory and run in documented order, each seeing what
  the ones before it wrote (train, rerun, resume from a path, start fresh, inspect).
- `Shared`: covered by another launch. With `group`: that group's launches here (the same
  command in another file, or the same launch with a placeholder config); it passes when all
  of the group's commands do. With `test`: a test of the suite that already runs the same
  example config on the same multi-process layout through the CLI (its file, and the layout
  or test name in it); here the documented command then runs as `automodel validate ...`,
  which checks its keys, values and parallel sizes against its process count without
  starting a process, so a misspelt or renamed override in the docs still fails. All of
  these validate runs go through the CLI's `main` in one process (`_validate_batch.py`).
- `Skip`: not runnable here, with the reason (a GPU, a cluster, the network, a placeholder).

A key is a normalised command (wherever it is documented), `(file, command)` (in that file
alone) or `(file, command, n)` (its n-th occurrence in that file); the most specific key wins.
Keys are commands rather than line numbers so that editing a doc does not unclassify the
commands below the edit. The fast tests fail on a documented command no key matches and on a
key that classifies no command, so every new docs command must be classified here. A `Run`
with `broken` set is a documented command known not to work: a strict xfail with the reason.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _doc_commands import (
    Command,
    argv,
    documented_commands,
    extract_text,
    tree_state,
    workdir,
)
from _shared import REPO

AM = "uv run automodel"
SFT = "examples/llm_finetune/tiny_sft.yaml"
MOE = "examples/llm_finetune/tiny_moe.yaml"
KD = "examples/llm_kd/tiny_kd.yaml"
BENCH = "examples/llm_benchmark/tiny_cpu.yaml"
ZLOSS = "examples/recipe_package/tiny_zloss.yaml"
VLM = "examples/vlm_finetune/tiny_vlm.yaml"
BI = "examples/retrieval/tiny_bi_encoder.yaml"
CROSS = "examples/retrieval/tiny_cross_encoder.yaml"
MINE = "examples/retrieval/mine_hard_negatives.yaml"
B = f"{AM} benchmark llm -c {BENCH} --nproc-per-node 2"  # docs/benchmark_recipe.md's $B
TIMEOUT = 300  # seconds, per command
VALIDATE_BATCH = "validate runs"  # the group of the validate runs that share one process


@dataclass(frozen=True)
class Run:
    """Run here (see the module docstring)."""

    group: str = ""  # commands of a group share a working directory, in documented order
    steps: int | None = None  # `--step_scheduler.max_steps N`: replaces the command's, or added
    subs: tuple[tuple[str, str], ...] = ()  # (old, new) text replacements; each must match
    env: tuple[tuple[str, str], ...] = ()  # extra environment; `{cwd}`: the working directory
    expect: tuple[str, ...] = ()  # texts its output (stdout and stderr) must contain
    files: tuple[str, ...] = ()  # files it must have written, relative to the working directory
    # (written, repository file): files it writes that must equal the repository's byte for byte
    identical: tuple[tuple[str, str], ...] = ()
    fails: bool = False  # documented to fail (an error the docs show): a non-zero exit
    setup: Callable[[Path], None] | None = field(default=None, compare=False)
    broken: str = ""  # a documented command that does not work: a strict xfail with the reason
    later: bool = False  # run after the group's other commands (it needs what they write)
    validate: bool = False  # run as `automodel validate ...` (set for Shared(test=...))


@dataclass(frozen=True)
class Shared:
    """Covered by `group`'s launches here, or by `test`'s ("tests/...py::name"); `why`: how."""

    why: str
    group: str = ""
    test: str = ""
    subs: tuple[tuple[str, str], ...] = ()  # with `test`: substitutions for the validate run


@dataclass(frozen=True)
class Skip:
    """Not runnable here."""

    reason: str


def shipped_corpus(name: str) -> tuple[tuple[str, str], ...]:
    """(written, shipped) pairs: `automodel preprocess -o runs/pretrain_data/NAME` writes the
    example's shipped corpus, byte for byte."""
    return tuple(
        (f"runs/pretrain_data/{name}{s}", f"examples/llm_pretrain/assets/indexed/{name}{s}")
        for s in (".bin", ".idx")
    )


def yaml_block(doc: str, containing: str) -> str:
    """The first ```yaml block of `doc` (relative to the repository) that contains `containing`."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", (REPO / doc).read_text(), flags=re.S | re.M)
    matching = [b for b in blocks if containing in b]
    assert matching, f"{doc} has no yaml block with {containing!r}"
    return matching[0]


def config_from_docs(name: str, doc: str, containing: str) -> Callable[[Path], None]:
    """A setup that writes `name`: tiny_sft.yaml with the sections of a yaml block of `doc`
    in place of its own (the block the doc tells the reader to add to a config)."""

    def setup(cwd: Path) -> None:
        block = yaml_block(doc, containing)
        sections = set(re.findall(r"^(\w+):", block, flags=re.M))
        kept, keep = [], True
        for line in (REPO / SFT).read_text().splitlines():
            top = re.match(r"^(\w+):", line)
            keep = top.group(1) not in sections if top else keep
            if keep:
                kept.append(line)
        (cwd / name).write_text("\n".join(kept) + "\n\n" + block)

    return setup


INSTALL = "installs from PyPI into the environment (network); the tests use the workspace"
SYNOPSIS = "a usage synopsis: <...>, CAPITALS and [...] are placeholders, not a command"
GPU_NODE = "needs a GPU node (8 GPUs, or a model too large for a CPU)"
MULTINODE = "needs several nodes (c10d rendezvous on node0)"
SLURM = "submits a job with sbatch: needs a SLURM cluster"
CI = "CI's own step: .ci/run runs it on the whole checkout"
SAME = "the same command as the README's"
THEIRS = (
    "placeholder their.yaml, the reader's NeMo AutoModel config "
    "(tests/recipes/test_nemo_compat.py runs these commands on one in their schema)"
)
ZLOSS_ENV = (("PYTHONPATH", "{cwd}/site"),)  # where docs/recipes.md's install put the package
MOE_TEST = "tests/recipes/test_llm_moe.py"
BENCH_TEST = "tests/recipes/test_llm_benchmark.py"
BENCH_POOLED = "tiny_cpu.yaml on 2 processes with this layout's overrides, in its pooled launch"
MOE_EP = f"{AM} finetune llm -c {MOE} --nproc-per-node 2 --distributed.ep_size 2"
EXPERT_LORA = (
    '"--+peft={_target_: automodel.peft.LoraConfig, dim: 4, target_modules: [q_proj, v_proj], '
    "target_parameters: ['*.experts.gate_up_proj', '*.experts.down_proj']}\""
)

COMMANDS: dict[str | tuple[str, str] | tuple[str, str, int], Run | Shared | Skip] = {
    # --- README.md ---------------------------------------------------------------------------
    "pip install uv": Skip("installs uv from PyPI (network); these tests run under uv already"),
    f"{AM} plot runs/tiny_sft": Run(
        group="sft",  # of docs/llm_recipe.md's run, documented further on
        later=True,
        files=("runs/tiny_sft/metrics.png", "runs/tiny_sft/metrics.svg"),
    ),
    f"{AM} plot runs/tiny_sft --x time": Run(group="sft", later=True),
    f"{AM} finetune llm -c {SFT}": Shared(
        group="sft", why="the same run, and its rerun, start docs/llm_recipe.md's sequence"
    ),
    ("README.md", f"{AM} finetune llm -c {SFT} --checkpoint.restore_from fresh"): Shared(
        group="sft", why="the same command ends docs/llm_recipe.md's sequence"
    ),
    f"{AM} finetune llm -c examples/llm_finetune/tiny_lora.yaml": Run(
        steps=2, files=("runs/tiny_lora/merged_model/config.json",)
    ),
    f"{AM} finetune llm -c {MOE}": Run(group="moe", steps=2),
    ("docs/llm_recipe.md", f"{AM} finetune llm -c {MOE}"): Shared(group="moe", why=SAME),
    MOE_EP: Shared(test=f"{MOE_TEST}::ep_fsdp2", why="2 processes, ep_size 2, on tiny_moe.yaml"),
    f"{AM} kd llm -c {KD}": Shared(
        group="kd", why="the same command starts docs/kd_recipe.md's distilled-vs-CE sequence"
    ),
    ("docs/kd_recipe.md", f"{AM} kd llm -c {KD}", 2): Run(group="kd", steps=2),
    f"{AM} benchmark llm -c {BENCH}": Run(
        group="benchmark", steps=5, files=("runs/benchmark_tiny/benchmark.json",)
    ),
    ("docs/benchmark_recipe.md", f"{AM} benchmark llm -c {BENCH}"): Shared(
        group="benchmark", why=SAME
    ),
    f"{AM} --help": Run(expect=("usage: automodel",)),
    f"{AM} list": Run(
        expect=("finetune.llm", "pretrain.llm", "kd.llm", "benchmark.llm", "finetune.vlm")
    ),
    f"{AM} validate finetune llm -c my.yaml --optimizer.lr 1e-4": Run(
        group="validate", subs=(("my.yaml", SFT),), expect=("config OK",)
    ),
    f"{AM} finetune llm -c my.yaml --nproc-per-node 2": Shared(
        group="dp", why="docs/parallelism.md's 2-process run of the tiny example (for my.yaml)"
    ),
    "uv run pytest": Skip("the test suite itself: running it from a test would recurse"),
    "automodel finetune llm -c cfg.yaml --optimizer.lr=3e-5 --+optimizer.eps 1e-8 --~optimizer.weight_decay": Run(
        # the example's min_lr (1e-4) would exceed the documented lr
        group="overrides",
        steps=1,
        subs=(("cfg.yaml", f"{SFT} --lr_scheduler.min_lr 1e-5"),),
    ),
    "uv run ruff check && uv run ruff format --check": Skip(CI),
    "uv lock --check": Skip(CI),
    "uv sync --compile-bytecode": Skip(CI),
    "bash .ci/run": Skip("everything CI runs, this suite included: it would recurse"),
    f"{AM} finetune llm -c {SFT} --dataset._target_ automodel.core.data.synthetic_text_dataset --~dataset.path --+dataset.num_samples 64 --dataset.seq_length 48 --~validation_dataset --step_scheduler.max_steps 3": Shared(
        test="tests/recipes/test_llm_recipe.py::test_synthetic_rows_fine_tune_without_data",
        why="the same overrides on tiny_sft.yaml, in-process",
    ),
    # --- docs/benchmark_recipe.md ------------------------------------------------------------
    f"{AM} validate benchmark llm -c examples/llm_benchmark/llama3_2_1b.yaml": Run(
        expect=("config OK",)
    ),
    "automodel benchmark llm -c examples/llm_benchmark/llama3_2_1b.yaml": Skip(GPU_NODE),
    "automodel benchmark llm -c examples/llm_benchmark/llama3_2_1b.yaml --nproc-per-node 8": Skip(
        GPU_NODE
    ),
    "automodel benchmark llm -c examples/llm_benchmark/llama3_1_8b.yaml --nproc-per-node 8": Skip(
        GPU_NODE
    ),
    B: Run(steps=5),
    f"{B} --distributed.strategy=ddp": Shared(test=f"{BENCH_TEST}::ddp", why=BENCH_POOLED),
    f"{B} --distributed.tp_size=2": Shared(test=f"{BENCH_TEST}::tp", why=BENCH_POOLED),
    f"{B} --distributed.cp_size=2": Shared(test=f"{BENCH_TEST}::cp", why=BENCH_POOLED),
    f"{B} --distributed.pp_size=2": Shared(test=f"{BENCH_TEST}::pp", why=BENCH_POOLED),
    f'{B} "--+peft={{_target_: automodel.peft.LoraConfig, match_all_linear: true, dim: 8}}"': Shared(
        test=f"{BENCH_TEST}::fsdp2_lora", why=BENCH_POOLED
    ),
    f"{B} --model.config=examples/llm_finetune/assets/tiny_qwen3_moe --moe.balancing=aux_loss --distributed.ep_size=2": Shared(
        test=f"{BENCH_TEST}::moe_ep", why=BENCH_POOLED
    ),
    f"{AM} benchmark llm -c {BENCH} --compile.enabled=true": Run(steps=5),
    f'{AM} benchmark llm -c {BENCH} "--benchmark.profile={{start_step: 5, end_step: 6}}"': Shared(
        test="tests/recipes/test_llm_benchmark.py::test_profile_window_writes_a_chrome_trace_and_is_not_measured",
        why="tiny_cpu.yaml with a profile window writes profile/trace_rank0.json, in-process",
    ),
    'nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop --trace=cuda,nvtx -o runs/llama3_2_1b automodel benchmark llm -c examples/llm_benchmark/llama3_2_1b.yaml "--benchmark.profile={start_step: 10, end_step: 11}"': Skip(
        "Nsight Systems on a GPU (CUDA)"
    ),
    # --- docs/checkpoint.md, docs/cli.md -----------------------------------------------------
    f"{AM} finetune llm -c {SFT} --optimizer.lr 1e4 --nonfinite.patience 3": Shared(
        test="tests/recipes/test_faults.py::test_a_diverging_run_skips_nonfinite_steps_then_stops_naming_them",
        why="the same diverging run (lr 1e4, patience 3) on the tiny example, in-process",
    ),
    f"{AM} finetune llm -c {SFT} --dataset.path other.jsonl": Shared(
        test="tests/recipes/test_faults.py::test_resuming_on_changed_data_is_refused_unless_asked_for",
        why="a resume of the tiny example over another file, refused, then accepted on purpose",
    ),
    "python -m automodel.checkpoint consolidate SRC DST [--max-shard-size 5GB]": Skip(SYNOPSIS),
    "python -m automodel.checkpoint inspect PATH [--tensors] [--json]": Skip(SYNOPSIS),
    "automodel <command> <domain> -c CONFIG [launch options] [--debug] [--dry-run] [overrides...]": Skip(
        SYNOPSIS
    ),
    "automodel validate <command> <domain> -c CONFIG [overrides...]": Skip(SYNOPSIS),
    "automodel list [<command>]": Skip(SYNOPSIS),
    "automodel --help | --version | <command> --help": Skip(SYNOPSIS),
    "automodel finetune llm -c my.yaml --optimizer.lr 1e-4 --step_scheduler.max_steps 100": Shared(
        group="overrides", why="a placeholder config with overrides: the README's example runs"
    ),
    "automodel validate finetune llm -c my.yaml": Shared(
        group="validate", why="the README's validate of the tiny example (for my.yaml)"
    ),
    "automodel validate finetune llm -c my.yaml --nproc-per-node 8 --distributed.cp_size 2": Run(
        # global batch 32 = local 8 x dp 4 on 8 processes with cp 2 (the example's local 16 is not)
        subs=(("my.yaml", f"{SFT} --step_scheduler.local_batch_size 8"),),
        expect=("config OK",),
    ),
    "automodel finetune llm -c my.yaml --nproc-per-node 8": Skip(GPU_NODE),
    "automodel finetune llm -c my.yaml --nnodes 2 --nproc-per-node 8 --rdzv-endpoint node0:29500": Skip(
        MULTINODE
    ),
    "automodel finetune llm -c my.yaml --nproc-per-node 2 --dry-run": Run(
        subs=(("my.yaml", SFT),), expect=("-m automodel.cli finetune llm",)
    ),
    "automodel finetune llm -c llama_sft.yaml --optimizer.lr 1e-4": Skip(SLURM),
    "automodel finetune llm -c llama_sft.yaml --optimizer.lr 1e-4 --dry-run": Run(
        # llama_sft.yaml: the tiny example with docs/cli.md's logging and slurm sections
        setup=config_from_docs("llama_sft.yaml", "docs/cli.md", "job_name: llama-sft"),
        expect=("#SBATCH --job-name=llama-sft", "#SBATCH --signal=USR1@120", "srun "),
    ),
    "automodel finetune llm -c llama_sft.yaml --slurm.nodes 4 --+slurm.qos high": Skip(SLURM),
    "automodel finetune llm -c llama_sft.yaml --no-slurm --nproc-per-node 8": Skip(GPU_NODE),
    ("docs/cli.md", "#!/bin/bash ..."): Skip("the sbatch script the CLI writes, shown: SLURM"),
    # --- docs/config.md ----------------------------------------------------------------------
    f"{AM} validate finetune llm -c {SFT} --model._target_ torch.hub.load": Run(
        fails=True, expect=("'torch.hub.load' is refused", "--allow-import torch.hub.load")
    ),
    "automodel finetune llm -c cfg.yaml --allow-import my_project": Skip(
        "placeholders: cfg.yaml and the reader's package my_project"
    ),
    "automodel finetune llm -c cfg.yaml --allow-import my_project.data.Collator": Skip(
        "placeholders: cfg.yaml and the reader's package my_project"
    ),
    'export AUTOMODEL_ALLOW_IMPORTS="my_project,other_project"': Skip(
        "sets a shell variable naming the reader's packages; nothing runs"
    ),
    "automodel finetune llm -c cfg.yaml --trust-remote-code": Skip(
        "placeholder cfg.yaml of a Hub model with remote code (download)"
    ),
    f"{AM} validate finetune llm -c {SFT} --+model.trust_remote_code true": Run(
        fails=True, expect=("would run Python code", "add --trust-remote-code")
    ),
    f"{AM} validate finetune llm -c {SFT} --+model.trust_remote_code true --trust-remote-code": Run(
        expect=("config OK",)
    ),
    # --- README.md and docs/vlm_recipe.md: the VLM example -------------------------------------
    f"{AM} finetune vlm -c {VLM}": Run(
        group="vlm",
        steps=2,
        files=(
            "runs/tiny_vlm/checkpoints/epoch_0_step_2/model/model.safetensors",
            "runs/tiny_vlm/checkpoints/epoch_0_step_2/model/processor_config.json",
        ),
        expect=("answer/accuracy",),
    ),
    ("docs/vlm_recipe.md", f"{AM} finetune vlm -c {VLM}"): Shared(group="vlm", why=SAME),
    f"{AM} finetune vlm -c {VLM} --nproc-per-node 2": Shared(
        test="tests/recipes/test_vlm.py::test_two_ranks_train_as_one_process",
        why="the example's data on 2 processes, FSDP2 and DDP, against one process",
    ),
    (
        f"{AM} finetune vlm -c {VLM} --dataset._target_ automodel.core.data.synthetic_image_chat_dataset "
        "--~dataset.path --+dataset.num_samples 64 --+dataset.image_size [64,64] "
        "--~validation_dataset --step_scheduler.max_steps 5"
    ): Shared(
        test="tests/recipes/test_vlm.py::test_synthetic_images_train_without_data",
        why="the tiny VLM on synthetic images in-process (2 steps, 32x32 images)",
    ),
    f"{AM} validate finetune vlm -c {VLM}": Run(expect=("config OK",)),
    f"{AM} validate finetune vlm -c {VLM} --nproc-per-node 2 --distributed.tp_size 2": Run(
        expect=("config OK",)
    ),
    f'{AM} validate finetune vlm -c {VLM} --nproc-per-node 2 "--+moe={{balancing: aux_loss}}" --distributed.ep_size 2': Run(
        expect=("config OK",)
    ),
    # --- README.md and docs/retrieval_recipe.md: train, mine, train on the mined rows, rerank ---
    f"{AM} finetune bi_encoder -c {BI}": Run(
        group="retrieval",
        steps=4,  # mining keeps negatives of any model: the example mines with no margin
        files=(
            "runs/tiny_bi_encoder/checkpoints/epoch_0_step_4/model/model.safetensors",
            "runs/tiny_bi_encoder/checkpoints/epoch_0_step_4/model/modules.json",
        ),
        expect=("mrr@10",),
    ),
    f"{AM} mine hard_negatives -c {MINE}": Run(
        group="retrieval",
        files=("runs/mined/train_hard_negatives.jsonl",),
        expect=("hard negatives each to runs/mined/train_hard_negatives.jsonl",),
    ),
    f"{AM} finetune cross_encoder -c {CROSS}": Run(group="retrieval", steps=4, expect=("mrr@10",)),
    ("docs/retrieval_recipe.md", f"{AM} finetune bi_encoder -c {BI}"): Shared(
        group="retrieval", why=SAME
    ),
    ("docs/retrieval_recipe.md", f"{AM} mine hard_negatives -c {MINE}"): Shared(
        group="retrieval", why=SAME
    ),
    ("docs/retrieval_recipe.md", f"{AM} finetune cross_encoder -c {CROSS}"): Shared(
        group="retrieval", why=SAME
    ),
    (
        f"{AM} finetune bi_encoder -c {BI} --+bi_encoder.separate_towers true "
        "--logging.run_dir runs/tiny_two_towers --checkpoint.checkpoint_dir runs/tiny_two_towers/checkpoints"
    ): Shared(
        test="tests/recipes/test_retrieval.py::test_separate_towers_train_apart_resume_and_load_as_a_sentence_transformers_router",
        why="the example with two towers: trained, resumed, loaded by sentence-transformers",
    ),
    f"{AM} finetune bi_encoder -c {BI} --nproc-per-node 2 --step_scheduler.local_batch_size 16": Shared(
        test="tests/recipes/test_retrieval.py::test_two_ranks_with_gathered_negatives_train_as_one_process",
        why="the example's data on 2 processes, FSDP2 and DDP, against one process",
    ),
    (
        f"{AM} finetune bi_encoder -c {BI} --dataset.path runs/mined/train_hard_negatives.jsonl "
        "--+dataset.corpus examples/retrieval/assets/corpus.jsonl --dataset.num_negatives 3 "
        "--step_scheduler.max_steps 1200 --logging.run_dir runs/tiny_bi_encoder_mined "
        "--checkpoint.checkpoint_dir runs/tiny_bi_encoder_mined/checkpoints"
    ): Run(
        group="retrieval",
        steps=4,
        later=True,  # trains on what the mining command wrote
        files=("runs/tiny_bi_encoder_mined/checkpoints/epoch_0_step_4/model/modules.json",),
    ),
    (
        f'{AM} finetune bi_encoder -c {BI} --dataset.path "[examples/retrieval/assets/train.jsonl, '
        "{path: runs/mined/train_hard_negatives.jsonl, corpus: examples/retrieval/assets/corpus.jsonl, "
        'num_samples: 1000}]" --logging.run_dir runs/tiny_bi_encoder_mixed '
        "--checkpoint.checkpoint_dir runs/tiny_bi_encoder_mixed/checkpoints"
    ): Shared(
        test="tests/core/test_retrieval_sources.py::test_several_sources_concatenate_sample_and_slice_as_theirs",
        why="several sources, one with num_samples, read in process; the command validated here",
    ),
    # --- docs/kd_recipe.md: distil, the same with CE alone, compare ---------------------------
    f"{AM} kd llm -c {KD} --nproc-per-node 2": Shared(
        test="tests/recipes/test_llm_kd.py::test_two_fsdp2_ranks_train_as_one_process",
        why="tiny_kd.yaml with FSDP2 on 2 processes",
    ),
    f"{AM} kd llm -c {KD} --nproc-per-node 4 --+teacher_distributed '{{dp_size: 1, tp_size: 2}}'": Shared(
        test="tests/recipes/test_llm_kd.py::test_a_teacher_on_processes_of_its_own_trains_as_one_process",
        why="tiny_kd.yaml, the student on 2 processes, the teacher (tp 2) on 2 more",
    ),
    f"{AM} kd llm -c {KD} --nproc-per-node 2 --distributed.cp_size 2": Shared(
        test="tests/recipes/test_llm_kd.py::test_context_parallel_ranks_train_as_one_process",
        why="tiny_kd.yaml with cp 2 on 2 processes (its overrides, plus the test's short run)",
    ),
    f"{AM} validate kd llm -c {KD}": Run(expect=("config OK",)),
    f"{AM} kd llm -c {KD} --kd.kd_ratio 0 --logging.run_dir runs/tiny_kd_ce": Run(
        group="kd", steps=2, files=("runs/tiny_kd_ce/checkpoints/LATEST",)
    ),
    "tail -n 1 runs/tiny_kd/validation.jsonl runs/tiny_kd_ce/validation.jsonl": Run(
        group="kd", expect=("==> runs/tiny_kd_ce/validation.jsonl <==", '"loss"')
    ),
    "uv run python examples/llm_kd/assets/build_teacher.py": Skip(
        "rewrites the committed teacher in examples/ (600 training steps, ~30 s)"
    ),
    # --- docs/llm_recipe.md: train, rerun (complete), extend, resume from a path, fresh ------
    f"{AM} pretrain llm -c examples/llm_pretrain/tiny_pretrain.yaml": Run(steps=2),
    # --- README.md: the own training loop, one process here; 2 ranks in its own test ----------
    "uv run python examples/own_loop/train.py": Run(
        group="own_loop",
        subs=(("train.py", "train.py --steps 2 --save-every 2"),),
        files=("runs/own_loop/checkpoints/LATEST",),
        expect=("final model: runs/own_loop/checkpoints/epoch_0_step_2/model",),
    ),
    "uv run torchrun --nproc-per-node 2 examples/own_loop/train.py": Shared(
        group="own_loop",
        why="the same program; tests/examples/test_own_loop.py runs it on 2 ranks and resumes it mid-run",
    ),
    # --- docs/pretrain_data.md: preprocess two corpora, pre-train on the shipped blend --------
    (
        f"{AM} preprocess -i examples/llm_finetune/assets/reverse_text_train.jsonl "
        "-o runs/pretrain_data/reverse --tokenizer examples/llm_finetune/assets/tiny_tokenizer --workers 2"
    ): Run(
        group="indexed",
        identical=shipped_corpus("reverse"),
        expect=("4,000 documents, 52,176 tokens (uint16)",),
    ),
    (
        f"{AM} preprocess -i examples/llm_pretrain/assets/copy_text.jsonl "
        "-o runs/pretrain_data/copy --tokenizer examples/llm_finetune/assets/tiny_tokenizer --workers 2"
    ): Run(
        group="indexed",
        identical=shipped_corpus("copy"),
    ),
    f"{AM} pretrain llm -c examples/llm_pretrain/tiny_pretrain_indexed.yaml": Run(
        group="indexed", steps=2, files=("runs/tiny_pretrain_indexed/checkpoints/LATEST",)
    ),
    f"{AM} pretrain llm -c examples/llm_pretrain/tiny_pretrain_nanogpt.yaml": Run(
        group="indexed", steps=2, files=("runs/tiny_pretrain_nanogpt/checkpoints/LATEST",)
    ),
    f"{AM} pretrain llm -c examples/llm_pretrain/tiny_pretrain_streaming.yaml": Run(
        group="indexed", steps=2, files=("runs/tiny_pretrain_streaming/checkpoints/LATEST",)
    ),
    "automodel finetune llm -c examples/llm_finetune/qwen3/qwen3_0_6b_chat.yaml": Skip(
        "downloads Qwen3-0.6B from the Hugging Face Hub; a GPU"
    ),
    ("docs/llm_recipe.md", f"{AM} finetune llm -c {SFT}"): Shared(
        group="sft", why="the same run starts the sequence below"
    ),
    ("docs/llm_recipe.md", f"{AM} finetune llm -c {SFT} --step_scheduler.max_steps 300", 1): Run(
        group="sft", steps=2, files=("runs/tiny_sft/checkpoints/epoch_0_step_2/model/config.json",)
    ),
    ("docs/llm_recipe.md", f"{AM} finetune llm -c {SFT} --step_scheduler.max_steps 300", 2): Run(
        group="sft", steps=2, expect=("the run is complete at step 2",)
    ),
    f"{AM} finetune llm -c {SFT} --step_scheduler.max_steps 400": Run(
        group="sft", steps=3, expect=("resumed from runs/tiny_sft/checkpoints/epoch_0_step_2",)
    ),
    f"{AM} finetune llm -c {SFT} --step_scheduler.max_steps 400 --checkpoint.restore_from runs/tiny_sft/checkpoints/epoch_2_step_300": Run(
        group="sft",
        steps=3,
        subs=(("epoch_2_step_300", "epoch_0_step_2"),),
        expect=("epoch_0_step_3 moved to runs/tiny_sft/previous/",),
    ),
    ("docs/llm_recipe.md", f"{AM} finetune llm -c {SFT} --checkpoint.restore_from fresh"): Run(
        group="sft", steps=2, expect=("starting at step 0: the earlier run's",)
    ),
    f"{AM} finetune llm -c {MOE} --nproc-per-node 2": Shared(
        test=f"{MOE_TEST}::fsdp2", why="tiny_moe.yaml with FSDP2 on 2 processes"
    ),
    ("docs/llm_recipe.md", MOE_EP): Shared(test=f"{MOE_TEST}::ep_fsdp2", why=SAME),
    (
        "docs/llm_recipe.md",
        f"{AM} finetune llm -c {MOE} --moe.balancing none {EXPERT_LORA} --+moe.lora_rank_scaling=true",
    ): Shared(
        test="tests/recipes/test_llm_expert_lora.py::test_the_expert_adapter_checkpoint_loads_in_peft_and_merges",
        why="tiny_moe.yaml with this LoRA and moe.lora_rank_scaling, one process (in the test's)",
    ),
    f"{AM} finetune llm -c {SFT} --+dataloader.padding_free true --+validation_dataloader.padding_free true": Shared(
        test="tests/recipes/test_llm_recipe.py::test_grad_accumulation_and_padding_free_match_one_big_batch",
        why="the tiny example padding-free (training and validation) in-process, against padded batches",
    ),
    f"{AM} finetune llm -c examples/llm_finetune/tiny_tool_calls.yaml": Shared(
        test="tests/recipes/test_llm_recipe.py::test_tool_calls_example_trains_on_the_assistant_calls",
        why="the example, 2 steps in-process, its labels checked against the assistant's writing",
    ),
    f"{AM} finetune llm -c {SFT} --+model.tie_word_embeddings false --+embedding_row_repair.min_norm 1e-4": Shared(
        test="tests/recipes/test_llm_recipe.py::test_embedding_row_repair_fixes_a_checkpoints_dead_rows_before_training",
        why="its overrides on 1 step in-process (nothing to repair), beside a damaged checkpoint",
    ),
    f"{AM} finetune llm -c {SFT} --+neftune.noise_alpha 5": Shared(
        test="tests/recipes/test_llm_recipe.py::test_neftune_adds_bounded_noise_to_embeddings_in_training_only",
        why="the tiny example with NEFTune in-process, its noise checked against the bound",
    ),
    f"{AM} finetune llm -c {SFT} --+qat.scheme int8_dynact_int4weight --+qat.group_size 32 --+qat.start_step 501": Shared(
        test="tests/recipes/test_llm_qat.py::test_documented_qat_run_saves_hf_checkpoints_and_resumes_with_fake_quantization_on",
        why="its qat: overrides, read from the docs, on 3 steps from step 2 in-process, resumed",
    ),
    # --- docs/logging.md ---------------------------------------------------------------------
    "pip install 'automodel-core[wandb]'": Skip(INSTALL),
    "pip install 'automodel-core[mlflow]'": Skip(INSTALL),
    "pip install 'automodel-recipes[plot]'": Skip(INSTALL),
    "automodel plot runs/tiny_sft": Shared(group="sft", why="the README's plot of the same run"),
    "automodel plot runs/lr_3e-3 runs/lr_1e-3": Run(
        group="kd",  # two runs to overlay: the distilled one and the one with CE alone
        subs=(("runs/lr_3e-3", "runs/tiny_kd"), ("runs/lr_1e-3", "runs/tiny_kd_ce")),
        files=("runs/tiny_kd/metrics_compare.png",),
    ),
    "automodel plot runs/lr_3e-3 runs/lr_1e-3 --x time --out plots/lr": Run(
        group="kd",
        subs=(("runs/lr_3e-3", "runs/tiny_kd"), ("runs/lr_1e-3", "runs/tiny_kd_ce")),
        files=("plots/lr.png", "plots/lr.svg"),
    ),
    f"MLFLOW_ALLOW_FILE_STORE=true {AM} finetune llm -c tiny_sft_mlflow.yaml": Run(
        steps=2,
        # tiny_sft_mlflow.yaml: the tiny example with docs/logging.md's local mlflow section
        setup=config_from_docs("tiny_sft_mlflow.yaml", "docs/logging.md", "runs/mlruns"),
        files=("runs/mlruns",),
    ),
    "MLFLOW_ALLOW_FILE_STORE=true uvx mlflow ui --backend-store-uri runs/mlruns": Skip(
        "a web server that runs until stopped; uvx downloads the full mlflow (network)"
    ),
    # --- docs/migrating.md: a NeMo AutoModel config -----------------------------------------
    "automodel their.yaml --nproc-per-node 8 --step_scheduler.max_steps 100": Skip(
        f"{THEIRS}; 8 GPUs"
    ),
    "automodel finetune llm -c their.yaml": Skip(THEIRS),
    "automodel validate their.yaml": Skip(THEIRS),
    "automodel migrate their.yaml --out ours.yaml": Skip(THEIRS),
    # --- docs/parallelism.md -----------------------------------------------------------------
    f"{AM} finetune llm -c {SFT} --nproc-per-node 2": Shared(
        group="dp", why="the same 2-process launch starts the resume-on-one-process sequence"
    ),
    f"{AM} finetune llm -c {SFT} --nproc-per-node 2 --distributed.pp_size 2": Shared(
        test="tests/recipes/test_llm_pipeline.py::1f1b", why="tiny_sft.yaml, pp_size 2 (1F1B)"
    ),
    f"{AM} finetune llm -c {SFT} --nproc-per-node 4 --distributed.pp_size 2 --distributed.cp_size 2": Shared(
        test="tests/recipes/test_llm_pipeline.py::1f1b_cp2", why="tiny_sft.yaml, pp 2 × cp 2"
    ),
    f"{AM} finetune llm -c {MOE} --nproc-per-node 4 --distributed.pp_size 2 --distributed.cp_size 2 --distributed.ep_size 2": Shared(
        test=f"{MOE_TEST}::ep_cp_pp", why="tiny_moe.yaml on 4 processes, pp 2 × cp 2, ep 2"
    ),
    ("docs/parallelism.md", MOE_EP): Shared(test=f"{MOE_TEST}::ep_fsdp2", why=SAME),
    f"{AM} finetune llm -c {MOE} --nproc-per-node 4 --distributed.ep_size 2 --distributed.cp_size 2": Shared(
        test=f"{MOE_TEST}::ep_cp", why="tiny_moe.yaml on 4 processes, ep_size 2, cp_size 2"
    ),
    f"{AM} finetune llm -c {MOE} --nproc-per-node 4 --distributed.pp_size 2 --distributed.ep_size 2": Shared(
        test="tests/recipes/test_llm_pipeline_moe.py::test_stages_with_expert_parallelism",
        why="tiny_moe.yaml on 4 processes, pp_size 2, ep_size 2 (one sample per micro-batch)",
    ),
    f"{AM} finetune llm -c {MOE} --nproc-per-node 8 --distributed.ep_size 8 --moe.dispatcher deepep": Skip(
        "DeepEP's kernels need CUDA GPUs (8 on one node)"
    ),
    f"{AM} finetune llm -c {SFT} --nproc-per-node 2 --distributed.cp_size 2": Shared(
        test="tests/recipes/test_llm_context_parallel.py::cp2_fsdp2",
        why="tiny_sft.yaml on 2 processes, cp_size 2",
    ),
    f"{AM} finetune llm -c {SFT} --nproc-per-node 2 --step_scheduler.max_steps 40": Run(
        group="dp", steps=2
    ),
    f"{AM} finetune llm -c {SFT} --step_scheduler.max_steps 60": Run(
        group="dp", steps=3, expect=("at step 2 (saved by 2 process(es), now 1)",)
    ),
    "automodel finetune llm -c cfg.yaml --nnodes 2 --nproc-per-node 8 --rdzv-endpoint node0:29400": Skip(
        MULTINODE
    ),
    "automodel finetune llm -c cfg.yaml --dry-run": Run(
        # cfg.yaml: the tiny example with docs/parallelism.md's slurm section
        setup=config_from_docs("cfg.yaml", "docs/parallelism.md", "forward_env: [MY_SETTING]"),
        expect=("#SBATCH --nodes=2", "MY_SETTING"),
    ),
    "automodel finetune llm -c cfg.yaml": Skip(SLURM),
    "uv run python benchmarks/fsdp2_recipe.py --nproc-per-node 8": Skip(GPU_NODE),
    # --- docs/recipes.md: install the example package, list it, train on 1 then 2 processes -
    "uv pip install ./examples/recipe_package": Run(
        group="zloss",  # into ./site (on PYTHONPATH below), not the project's environment
        subs=(("install", f"install --python {sys.executable} --target site --no-deps"),),
    ),
    ("docs/recipes.md", f"{AM} list"): Run(group="zloss", env=ZLOSS_ENV, expect=("zloss.llm",)),
    f"{AM} zloss llm -c {ZLOSS}": Run(group="zloss", env=ZLOSS_ENV, steps=2),
    f"{AM} zloss llm -c {ZLOSS} --nproc-per-node 2": Run(
        # after the run above the documented command finds the run complete: one step more
        group="zloss",
        env=ZLOSS_ENV,
        steps=3,
        files=("runs/tiny_zloss/checkpoints/epoch_0_step_3",),
    ),
    # --- packages/*/README.md ----------------------------------------------------------------
    "pip install automodel-checkpoint": Skip(INSTALL),
    "pip install automodel-core": Skip(INSTALL),
    "pip install automodel-distributed": Skip(INSTALL),
    "pip install automodel-moe": Skip(INSTALL),
    "pip install automodel-peft": Skip(INSTALL),
    'pip install "automodel-peft[qlora]"': Skip(INSTALL),
    'pip install "automodel-peft[triton]"': Skip(INSTALL),
    "pip install automodel-recipes": Skip(INSTALL),
    "python -m automodel.checkpoint consolidate runs/ckpt out/hf-model": Run(
        group="sft",  # the checkpoints of docs/llm_recipe.md's sequence
        subs=(("runs/ckpt", "runs/tiny_sft/checkpoints"),),
        files=("out/hf-model/config.json",),
    ),
    "python -m automodel.checkpoint inspect runs/ckpt/epoch_0_step_200 --tensors": Run(
        group="sft",
        subs=(("runs/ckpt/epoch_0_step_200", "runs/tiny_sft/checkpoints/epoch_0_step_2"),),
    ),
    "automodel list": Run(expect=("finetune.llm",)),
    "automodel finetune llm -c config.yaml --optimizer.lr 1e-4": Shared(
        group="overrides", why="a placeholder config with an override: the README's example runs"
    ),
}


# --- classification ---------------------------------------------------------------------------

Entry = Run | Shared | Skip


def classify(commands: list[Command]) -> tuple[dict[str, tuple[object, Entry]], list, list]:
    """({command id: (key, entry)}, unclassified commands, stale keys) for COMMANDS."""
    seen: dict[tuple[str, str], int] = {}
    chosen: dict[str, tuple[object, Entry]] = {}
    unclassified = []
    for command in commands:
        n = seen[command.file, command.text] = seen.get((command.file, command.text), 0) + 1
        for key in ((command.file, command.text, n), (command.file, command.text), command.text):
            if key in COMMANDS:
                chosen[command.id] = key, COMMANDS[key]
                break
        else:
            unclassified.append(command)
    used = {key for key, _ in chosen.values()}
    return chosen, unclassified, [key for key in COMMANDS if key not in used]


COMMANDS_FOUND = documented_commands()
CLASSIFIED, UNCLASSIFIED, STALE = classify(COMMANDS_FOUND)


def entry_of(command: Command) -> Entry | None:
    return CLASSIFIED.get(command.id, (None, None))[1]


def launch_of(command: Command) -> tuple[str, Run] | None:
    """(group, what runs) for a command this module launches itself: a Run, or the validate run
    of a Shared(test=...)."""
    entry = entry_of(command)
    if isinstance(entry, Run) and _batched(command, entry):
        return VALIDATE_BATCH, entry
    if isinstance(entry, Run):
        return entry.group or command.id, entry
    if isinstance(entry, Shared) and entry.test:
        run = Run(subs=entry.subs, validate=True, expect=("config OK",))
        return VALIDATE_BATCH, run  # all of them in one process: see run_validate_batch
    return None


def _batched(command: Command, entry: Run) -> bool:
    """A lone `automodel validate ...` Run that needs nothing but its exit code and output: it
    joins the validate runs' one process."""
    lone = not (entry.group or entry.setup or entry.env or entry.files or entry.identical)
    text = prepared(command, entry)
    return (
        lone and not entry.broken and re.match(r"(uv run )?automodel validate ", text) is not None
    )


def prepared(command: Command, entry: Run) -> str:
    """The command as the test runs it: the entry's substitutions, then its step count."""
    text = command.text
    for old, new in entry.subs:
        assert old in text, f"{command.id}: substitution {old!r} matches nothing in {text!r}"
        text = text.replace(old, new, 1)
    if entry.validate:
        text, replaced = re.subn(r"^((uv run )?automodel) ", r"\1 validate ", text)
        assert replaced, f"{command.id}: not an automodel command to validate"
    if entry.steps is not None:
        steps = f"--step_scheduler.max_steps {entry.steps}"
        text, replaced = re.subn(r"--step_scheduler\.max_steps[ =]\S+", steps, text)
        text = text if replaced else f"{text} {steps}"
    return text


def groups() -> dict[str, list[tuple[Command, Run]]]:
    """The launches: each group's commands in documented order (a lone Run is its own group)."""
    out: dict[str, list[tuple[Command, Run]]] = {}
    for command in COMMANDS_FOUND:
        if launch := launch_of(command):
            out.setdefault(launch[0], []).append((command, launch[1]))
    return {name: sorted(members, key=lambda m: m[1].later) for name, members in out.items()}


# --- the fast checks: every documented command is classified, every entry is used -------------


def test_the_docs_have_commands():
    files = {c.file for c in COMMANDS_FOUND}
    assert {"README.md", "docs/llm_recipe.md", "docs/parallelism.md"} <= files
    assert len(COMMANDS_FOUND) > 50


SAMPLE = """Text.

```bash
pip install x   # a comment
A=1 uv run automodel a \\
    --b 2 "--c={d: '#e'}"   # continued
# a comment line
B="uv run automodel f --g 1"
$B --h=2
echo "$HOME ${B}"
```

```console
$ automodel list
finetune.llm  ...
$ automodel x \\
>   --y 1
```

```sh
#!/bin/bash
srun $X
```

```python
print("not a shell block")
```
"""


def test_extraction_joins_lines_drops_comments_and_expands_the_blocks_variables():
    commands = [(c.line, c.text) for c in extract_text("doc.md", SAMPLE)]
    assert commands == [
        (4, "pip install x"),
        (5, "A=1 uv run automodel a --b 2 \"--c={d: '#e'}\""),
        (9, "uv run automodel f --g 1 --h=2"),
        (10, 'echo "$HOME uv run automodel f --g 1"'),
        (14, "automodel list"),
        (16, "automodel x --y 1"),
        (21, "#!/bin/bash ..."),
    ]
    env, words = argv(commands[1][1])
    assert env == {"A": "1"}
    assert words == [sys.executable, "-m", "automodel.cli", "a", "--b", "2", "--c={d: '#e'}"]


def test_every_documented_command_is_classified():
    listed = "\n".join(f"  {c.id}: {c.text}" for c in UNCLASSIFIED)
    assert not UNCLASSIFIED, f"classify these documented commands in COMMANDS:\n{listed}"


def test_every_entry_classifies_a_documented_command():
    assert not STALE, f"these COMMANDS keys match no documented command (stale): {STALE}"


def test_every_entry_is_well_formed():
    launched = groups()
    for command in COMMANDS_FOUND:
        entry = entry_of(command)
        if isinstance(entry, Shared):
            assert bool(entry.group) != bool(entry.test), f"{command.id}: a group or a test"
            assert entry.why, command.id
            if entry.group:
                assert entry.group in launched, f"{command.id}: no Run has group {entry.group!r}"
            else:
                path, name = entry.test.split("::")
                assert name in (REPO / path).read_text(), f"{command.id}: no {entry.test}"
        elif isinstance(entry, Skip):
            assert entry.reason, command.id
        if launch := launch_of(command):
            _, words = argv(prepared(command, launch[1]))  # substitutions apply, words split
            assert words, command.id


# --- the slow test: the commands, run ---------------------------------------------------------


@dataclass
class Outcome:
    text: str  # what ran
    returncode: int
    output: str
    seconds: float
    problems: list[str]


def _problems(entry: Run, code: int, output: str, cwd: Path) -> list[str]:
    """What is wrong with a command's outcome: its exit code, output and files against `entry`."""
    problems = []
    if (code != 0) != entry.fails:
        problems.append(f"exit code {code}" + (", a failure expected" if entry.fails else ""))
    problems += [f"no {text!r} in the output" for text in entry.expect if text not in output]
    problems += [f"{name} was not written" for name in entry.files if not (cwd / name).exists()]
    problems += [
        f"{written} differs from {shipped}"
        for written, shipped in entry.identical
        if not (cwd / written).is_file()
        or (cwd / written).read_bytes() != (REPO / shipped).read_bytes()
    ]
    return problems


def run_validate_batch(members: list[tuple[Command, Run]], cwd: Path) -> dict[str, Outcome]:
    """The validate runs (of the Shared(test=...) commands, and the documented `automodel
    validate` commands), each distinct one once, all in one process
    (tests/docs/_validate_batch.py) through the CLI's `main`: one start-up for all."""
    texts = {command.id: prepared(command, entry) for command, entry in members}
    distinct = list(dict.fromkeys(texts.values()))
    jobs = []
    for text in distinct:
        extra, words = argv(text)
        assert words[1:3] == ["-m", "automodel.cli"], text
        jobs.append({"args": words[3:], "env": extra})
    script = Path(__file__).with_name("_validate_batch.py")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)], input=json.dumps(jobs), cwd=cwd, capture_output=True,
        text=True, timeout=TIMEOUT,
    )  # fmt: skip
    seconds = (time.monotonic() - start) / max(len(distinct), 1)
    if proc.returncode != 0:
        results = [{"code": proc.returncode, "output": proc.stderr[-4000:]}] * len(distinct)
    else:
        results = json.loads(proc.stdout)
    by_text = dict(zip(distinct, results, strict=True))
    outcomes = {}
    for command, entry in members:
        result = by_text[texts[command.id]]
        problems = _problems(entry, result["code"], result["output"], cwd)
        outcomes[command.id] = Outcome(
            texts[command.id], result["code"], result["output"], seconds, problems
        )
    return outcomes


def run_group(members: list[tuple[Command, Run]], cwd: Path) -> dict[str, Outcome]:
    """Run a group's commands in order in `cwd`; their outcomes by command id."""
    if all(entry.validate or _batched(command, entry) for command, entry in members):
        return run_validate_batch(members, cwd)
    outcomes: dict[str, Outcome] = {}
    for command, entry in members:
        if entry.setup:
            entry.setup(cwd)
        text = prepared(command, entry)
        extra, words = argv(text)
        env = {**os.environ, **extra, **{k: v.format(cwd=cwd) for k, v in entry.env}}
        start = time.monotonic()
        try:
            proc = subprocess.run(
                words, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
            )
            code, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            code, output = -1, f"timed out after {TIMEOUT} s\n{e.stdout or ''}{e.stderr or ''}"
        seconds = time.monotonic() - start
        problems = _problems(entry, code, output, cwd)
        outcomes[command.id] = Outcome(text, code, output, seconds, problems)
    return outcomes


class Launches:
    """The groups the selected tests need, three at a time: a launch spends much of its time
    in one process's imports or waiting, so three keep a 2-core machine busy. The largest
    groups start first."""

    def __init__(self, needed: list[str], root: Path) -> None:
        self.examples_before = tree_state(REPO / "examples")
        launched = groups()
        order = sorted(dict.fromkeys(needed), key=lambda name: -len(launched[name]))
        self.pool = ThreadPoolExecutor(max_workers=3)
        self.futures: dict[str, Future[dict[str, Outcome]]] = {
            name: self.pool.submit(run_group, launched[name], workdir(root / f"{i:02d}"))
            for i, name in enumerate(order)
        }

    def group(self, name: str) -> dict[str, Outcome]:
        return self.futures[name].result()


def _group_of(command: Command) -> str | None:
    if launch := launch_of(command):
        return launch[0]
    entry = entry_of(command)
    return entry.group if isinstance(entry, Shared) else None


@pytest.fixture(scope="module")
def launches(request, tmp_path_factory) -> Iterator[Launches]:
    """The launches of the selected commands' groups; on teardown, their times."""
    selected = {
        item.callspec.params["command"].id
        for item in request.session.items
        if item.originalname == "test_documented_command" and hasattr(item, "callspec")
    }
    needed = [g for c in COMMANDS_FOUND if c.id in selected and (g := _group_of(c))]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    launched = Launches(needed, tmp_path_factory.mktemp("documented_commands"))
    yield launched
    launched.pool.shutdown(wait=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    times = sorted(
        ((o.seconds, i, o.text) for f in launched.futures.values() for i, o in f.result().items()),
        reverse=True,
    )
    lines = "\n".join(f"{s:6.1f} s  {i}: {t}" for s, i, t in times)
    print(f"\ndocumented commands: {wall:.0f} s wall, {used:.0f} s CPU in all\n{lines}")


def _param(command: Command):
    entry = entry_of(command)
    marks = []
    if isinstance(entry, Run) and entry.broken:
        marks.append(pytest.mark.xfail(strict=True, reason=f"broken: {entry.broken}"))
    return pytest.param(command, id=command.id, marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS_FOUND])
def test_documented_command(command: Command, launches: Launches):
    entry = entry_of(command)
    if entry is None:
        pytest.fail(f"{command.id} is not classified in COMMANDS: {command.text}")
    if isinstance(entry, Skip):
        pytest.skip(entry.reason)
    if isinstance(entry, Shared) and entry.group:
        failed = [i for i, o in launches.group(entry.group).items() if o.problems]
        assert not failed, f"{command.id} shares group {entry.group!r}, where {failed} failed"
        return
    group, _ = launch_of(command)
    outcome = launches.group(group)[command.id]
    assert not outcome.problems, (
        f"{command.id}: `{outcome.text}`: {'; '.join(outcome.problems)}\n{outcome.output[-4000:]}"
    )


@pytest.mark.slow
def test_the_commands_wrote_nothing_into_the_repository(launches: Launches):
    for future in launches.futures.values():
        future.result()
    after = tree_state(REPO / "examples")
    changed = sorted(set(after.items()) ^ set(launches.examples_before.items()))
    assert not changed, f"the documented commands changed files under examples/: {changed}"
