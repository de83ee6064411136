"""Which Hugging Face causal-LM families the LLM recipe trains: a support matrix.

Run by hand (not part of the tests):

    uv run python benchmarks/architectures.py --out benchmarks/results/architectures.json
    uv run python benchmarks/architectures.py --families llama gpt2 mixtral --md /tmp/models.md

For every model type of transformers' `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` (or `--families`),
a tiny randomly initialised model (benchmarks/tiny_configs.py: 2 layers, hidden 64, vocabulary
128, every layer kind of a hybrid kept) goes through these checks; each column is one:

- transformers: plain transformers trains it: `AutoModelForCausalLM.from_config`, 3 AdamW steps
  on random ids with labels; the losses and every gradient are finite. If not, the other
  columns are "n/a (transformers cannot train it)".
- full FT: our recipe (`FinetuneRecipeForCausalLM`, in-process, examples/llm_finetune/tiny_sft.yaml
  with the model built from the tiny config) trains 3 steps with finite losses.
- ckpt reload: that run's final checkpoint (`checkpoints/epoch_*_step_3/model`) loads with plain
  `transformers.AutoModelForCausalLM.from_pretrained` and gives the trained model's logits.
- LoRA: tiny_lora.yaml's `peft:` section (`match_all_linear`) on the tiny model built from its
  config with a seed, 3 steps with finite losses; the adapter of the final checkpoint loads
  with `peft.PeftModel.from_pretrained` onto the same base (built again with the seed) and gives
  the trained model's logits, which differ from the base's (an adapter that changes nothing
  fails).
- FSDP2: 2 processes (gloo on CPU; one `torchrun --nproc-per-node 2` launch loops over every
  family that plain transformers trains), `distributed.strategy: fsdp2`, 2 steps, finite losses.
- MFU: `automodel.core.training.training_flops_per_token(model, seq_len)` returns a number
  ("n/a (function missing)" while it does not exist).

Every family runs in its own process with a timeout (`--timeout`), so an exception, a crash or a
hang is recorded and the sweep goes on; a failing family in the FSDP2 launch ends that launch
(its process group may be unusable) and a new one continues with the next family. Data: the
first 64 rows of the repo's reverse-task chat data with the repo's 32-token tokenizer, which
every tiny vocabulary (128) covers.

Writes one JSON row per family (`--out`), the markdown matrix (`--md`, default docs/models.md;
only when every family ran, unless `--md` is given) and prints the totals. After a fix,
`--families a b --update benchmarks/results/architectures.json` reruns those families and
replaces their rows (docs/models.md then says which rows were rerun when);
`--render benchmarks/results/architectures.json` only rewrites the markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

# The workers run a copy of this script elsewhere; the driver tells them where the repo is.
REPO = Path(os.environ.get("ARCHITECTURES_REPO") or Path(__file__).resolve().parents[1])
ASSETS = REPO / "examples/llm_finetune/assets"
SFT_CONFIG = REPO / "examples/llm_finetune/tiny_sft.yaml"
LORA_CONFIG = REPO / "examples/llm_finetune/tiny_lora.yaml"
DOCS = REPO / "docs/models.md"
SCRIPT = Path(__file__).name
# Failures that come from a source tree edited while the sweep runs, not from the family.
TRANSIENT = ("partially initialized module", "SyntaxError", "IndentationError")
COMMAND = "uv run python benchmarks/architectures.py --out benchmarks/results/architectures.json"

COLUMNS = {  # key: (markdown header, what it checks)
    "transformers": ("transformers", "plain transformers trains the tiny model (3 AdamW steps, "
                     "finite losses and gradients)"),
    "full_finetune": ("full FT", "our recipe fine-tunes it 3 steps (finite losses)"),
    "checkpoint_reload": ("ckpt reload", "the full FT checkpoint loads with plain transformers' "
                          "`from_pretrained` and gives the trained model's logits"),
    "lora": ("LoRA", "`peft:` with `match_all_linear`, 3 steps; the adapter loads with "
             "`peft.PeftModel.from_pretrained` onto the base and gives the trained logits"),
    "fsdp2": ("FSDP2", "2 processes (gloo, CPU), `strategy: fsdp2`, 2 steps, finite losses"),
    "mfu": ("MFU", "`training_flops_per_token(model, seq_len)` returns a number"),
}  # fmt: skip
NOT_TRAINABLE = "n/a (transformers cannot train it)"
SEQ_LEN = 64
TRAIN_ROWS, VAL_ROWS = 64, 8
LOGIT_ATOL = 1e-4
LORA_SEED = 1234


# ----------------------------------------------------------------------------- helpers


def reason(e: BaseException) -> str:
    """`Type: first line of the message` (the last line for validation wrappers)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if "validation error" in text.lower() and len(lines) > 1:
        text = lines[-1]  # huggingface_hub's strict dataclasses put the cause last
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)  # <class 'a.b.C'> -> C
    return f"{type(e).__name__}: {text}"[:300]


def passed(**extra: Any) -> dict[str, Any]:
    return {"status": "pass", "reason": None, **extra}


def failed(why: str, **extra: Any) -> dict[str, Any]:
    return {"status": "fail", "reason": why, **extra}


def not_applicable(why: str) -> dict[str, Any]:
    return {"status": "n/a", "reason": why}


def finite(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def quiet() -> None:
    """Fewer warnings from transformers and torch in the worker logs."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    transformers.logging.set_verbosity_error()


def make_data(work: Path) -> Path:
    """`train.jsonl` and `val.jsonl`: the first rows of the reverse task."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, dst, rows in (
        ("reverse_train.jsonl", "train.jsonl", TRAIN_ROWS),
        ("reverse_validation.jsonl", "val.jsonl", VAL_ROWS),
    ):
        lines = (ASSETS / name).read_text().splitlines(keepends=True)
        (data / dst).write_text("".join(lines[:rows]))
    return data


def recipe_overrides(run_dir: Path, data: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--step_scheduler.global_batch_size=4",
        "--step_scheduler.local_batch_size=2",
        f"--step_scheduler.max_steps={steps}",
        f"--step_scheduler.val_every_steps={steps}",
        f"--step_scheduler.ckpt_every_steps={steps}",
        "--step_scheduler.log_every_steps=1",
        f"--dataset.path={data / 'train.jsonl'}",
        f"--validation_dataset.path={data / 'val.jsonl'}",
        f"--dataset.seq_length={SEQ_LEN}",
        f"--validation_dataset.seq_length={SEQ_LEN}",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--+checkpoint.restore_from=fresh",
        "--+logging.progress=false",
        "--+logging.level=WARNING",
        "--lr_scheduler.warmup_steps=1",
        *extra,
    ]


def run_recipe(config: Path, overrides: list[str]) -> Any:
    """The LLM recipe, set up and trained in this process (as tests/recipes/conftest.py does)."""
    from automodel.core.config import load_config
    from automodel.recipes.llm import FinetuneRecipeForCausalLM

    recipe = FinetuneRecipeForCausalLM(load_config(config, overrides))
    recipe.setup()
    recipe.run_train_validation_loop()
    return recipe


def training_losses(run_dir: Path) -> list[float]:
    path = run_dir / "training.jsonl"
    if not path.exists():
        return []
    return [float(json.loads(line)["loss"]) for line in path.read_text().splitlines() if line]


def probe_ids(vocab: int = 32) -> Any:
    import torch

    generator = torch.Generator().manual_seed(7)
    return torch.randint(4, vocab, (2, 24), generator=generator)


def logits_of(model: Any, ids: Any) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def max_diff(a: Any, b: Any) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a - b).abs().max())


def free(*objects: Any) -> None:
    for obj in objects:
        if obj is not None and hasattr(obj, "__dict__"):
            vars(obj).clear()
    gc.collect()


# ----------------------------------------------------------------------------- one family


def check_transformers(family: str, work: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(column, the trained-from-scratch model or None, facts about the family)."""
    import torch
    import transformers
    from tiny_configs import tiny_config

    facts: dict[str, Any] = {}
    try:
        config = tiny_config(family)
    except Exception as e:
        return (
            failed(f"tiny config: {reason(e)}", default_builds=default_builds(family)),
            None,
            facts,
        )
    facts["config_class"] = type(config).__name__
    text = config.get_text_config(decoder=True)
    facts["layers"] = getattr(text, "num_hidden_layers", None)
    facts["heterogeneous"] = bool(getattr(text, "is_heterogeneous", False))
    layer_types = getattr(text, "layer_types", None)
    facts["layer_types"] = sorted(set(layer_types)) if isinstance(layer_types, list) else None
    try:
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
    except Exception as e:
        return failed(f"build: {reason(e)}", default_builds=default_builds(family)), None, facts
    facts["model_class"] = type(model).__name__
    kinds = {type(m).__name__.lower() for m in model.modules()}
    facts["moe"] = any("expert" in k or "moe" in k for k in kinds)
    facts["parameters"] = sum(p.numel() for p in model.parameters())
    try:
        config.save_pretrained(work / "tiny_config")
    except Exception as e:
        return failed(f"config.save_pretrained: {reason(e)}"), None, facts
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(4, 32, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    losses: list[float] = []
    try:
        for _ in range(3):
            out = model(input_ids=ids, labels=ids, use_cache=False)
            loss = out.loss
            if loss is None:  # no loss from labels: next-token CE on the logits
                logits = out.logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
                )
            loss.backward()
            bad = [n for n, p in model.named_parameters() if p.grad is not None
                   and not torch.isfinite(p.grad).all()]  # fmt: skip
            losses.append(float(loss))
            if bad:
                return failed(f"non-finite gradient in {bad[0]}", losses=losses), None, facts
            optimizer.step()
            optimizer.zero_grad()
    except Exception as e:
        return failed(f"train: {reason(e)}", losses=losses), None, facts
    if not finite(losses):
        return failed(f"non-finite loss {losses}", losses=losses), None, facts
    decreasing = losses[-1] < losses[0]
    return passed(losses=losses, decreasing=decreasing), model, facts


def default_builds(family: str) -> str:
    """Whether transformers builds the family's *default* config (on the meta device)."""
    import torch
    import transformers
    from tiny_configs import causal_lm_config

    try:
        config = causal_lm_config(transformers.AutoConfig.for_model(family))
        with torch.device("meta"):
            transformers.AutoModelForCausalLM.from_config(config)
    except Exception as e:
        return f"no ({reason(e)})"
    return "yes"


def check_mfu(model: Any) -> dict[str, Any]:
    try:
        from automodel.core.training import training_flops_per_token
    except ImportError:
        return not_applicable("n/a (function missing)")
    try:
        flops = training_flops_per_token(model, SEQ_LEN)
    except Exception as e:
        return failed(reason(e))
    if flops is None:
        return failed("training_flops_per_token returned None")
    if not (isinstance(flops, int | float) and math.isfinite(flops) and flops > 0):
        return failed(f"training_flops_per_token returned {flops!r}")
    return passed(flops_per_token=float(flops))


def check_full_finetune(work: Path, data: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full FT column, checkpoint reload column)."""
    import transformers

    run_dir = work / "full"
    overrides = recipe_overrides(
        run_dir, data, 3, f"--model.config={work / 'tiny_config'}", "--+distributed.device=cpu"
    )
    recipe = None
    try:
        recipe = run_recipe(SFT_CONFIG, overrides)
    except Exception as e:
        free(recipe)
        return failed(reason(e), trace=traceback.format_exc(limit=-3)), not_applicable(
            "n/a (full FT failed)"
        )
    losses = training_losses(run_dir)
    if len(losses) != 3 or not finite(losses):
        free(recipe)
        return failed(f"losses {losses}"), not_applicable("n/a (full FT failed)")
    column = passed(losses=losses)
    try:
        (folder,) = sorted((run_dir / "checkpoints").glob("epoch_*_step_3/model"))
        ids = probe_ids()
        trained = logits_of(recipe.unwrapped, ids)
        free(recipe)
        recipe = None
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
        diff = max_diff(trained, logits_of(reloaded, ids))
    except Exception as e:
        free(recipe)
        return column, failed(reason(e), trace=traceback.format_exc(limit=-3))
    if not diff <= LOGIT_ATOL:
        return column, failed(f"reloaded logits differ by {diff:.3g}", max_abs_diff=diff)
    return column, passed(max_abs_diff=diff)


def lora_overrides() -> list[str]:
    """tiny_lora.yaml's `peft:` section, as overrides of tiny_sft.yaml."""
    from automodel.core.config import load_config

    peft_section = load_config(LORA_CONFIG).peft.to_dict()

    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    return [f"--+peft.{key}={text(value)}" for key, value in peft_section.items()]


def annotate_roundtrip(column: dict[str, Any], model: Any, work: Path) -> dict[str, Any]:
    """Whether plain transformers round-trips the family (save_pretrained, from_pretrained)."""
    import transformers

    try:
        model.save_pretrained(work / "roundtrip")
        transformers.AutoModelForCausalLM.from_pretrained(work / "roundtrip")
    except Exception as e:
        why = f"{column['reason']}; plain transformers' save/from_pretrained fails too"
        return {**column, "reason": why, "transformers_roundtrip": f"no ({reason(e)})"}
    return {**column, "transformers_roundtrip": "yes"}


def check_lora(work: Path, data: Path) -> dict[str, Any]:
    """LoRA on the tiny model built from its config with a seed (tiny_sft.yaml's model section
    and tiny_lora.yaml's `peft:`), so that plain peft gets the very same base to load the
    adapter onto, whether or not transformers round-trips the family's checkpoints."""
    from automodel.core.models import AutoModelForCausalLM

    run_dir = work / "lora"
    overrides = recipe_overrides(
        run_dir, data, 3,
        f"--model.config={work / 'tiny_config'}", f"--model.seed={LORA_SEED}",
        *lora_overrides(), "--+distributed.device=cpu",
    )  # fmt: skip
    recipe = None
    try:
        recipe = run_recipe(SFT_CONFIG, overrides)
    except Exception as e:
        free(recipe)
        return failed(reason(e), trace=traceback.format_exc(limit=-3))
    losses = training_losses(run_dir)
    if len(losses) != 3 or not finite(losses):
        free(recipe)
        return failed(f"losses {losses}")
    try:
        import peft

        (folder,) = sorted((run_dir / "checkpoints").glob("epoch_*_step_3/model"))
        ids = probe_ids()
        trained = logits_of(recipe.unwrapped, ids)
        free(recipe)
        recipe = None
        base = AutoModelForCausalLM.from_config(work / "tiny_config", seed=LORA_SEED)
        base_logits = logits_of(base, ids)
        reloaded = peft.PeftModel.from_pretrained(base, folder)
        diff = max_diff(trained, logits_of(reloaded, ids))
        effect = max_diff(trained, base_logits)
    except Exception as e:
        free(recipe)
        return failed(
            f"peft reload: {reason(e)}", losses=losses, trace=traceback.format_exc(limit=-3)
        )
    if not diff <= LOGIT_ATOL:
        return failed(
            f"peft-reloaded logits differ by {diff:.3g}", losses=losses, max_abs_diff=diff
        )
    if effect == 0:
        return failed("the adapter does not change the logits", losses=losses)
    return passed(losses=losses, max_abs_diff=diff, adapter_effect=effect)


def run_single(family: str, work: Path, result_path: Path) -> None:
    """Columns transformers, full FT, ckpt reload, LoRA and MFU of one family, into a JSON file.

    The file is rewritten after every column, so a timeout still keeps the finished ones."""
    quiet()
    os.chdir(REPO)
    work.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"family": family}

    def save(**columns: Any) -> None:
        row.update(columns)
        write_json(result_path, row)

    start = time.perf_counter()
    column, model, facts = check_transformers(family, work)
    row.update(facts)
    save(transformers=column)
    if model is None:
        na = not_applicable(NOT_TRAINABLE)
        save(**{k: na for k in COLUMNS if k != "transformers"})
        return
    save(mfu=check_mfu(model))
    data = make_data(work)
    full, reload = check_full_finetune(work, data)
    if reload["status"] == "fail":
        reload = annotate_roundtrip(reload, model, work)
    save(full_finetune=full, checkpoint_reload=reload)
    save(lora=check_lora(work, data))
    save(seconds=round(time.perf_counter() - start, 1))
    from automodel.distributed import destroy_distributed

    destroy_distributed(barrier=False)


# ----------------------------------------------------------------------------- FSDP2 worker


def run_fsdp(families: list[str], work: Path, result_path: Path) -> None:
    """Inside torchrun: each family 2 steps with FSDP2 over 2 processes; rank 0 appends a row.

    A family that fails on any rank ends the launch after its row (a collective may have been
    left half done); the driver starts a new launch for the families after it."""
    quiet()
    os.chdir(REPO)
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=180))
    rank = dist.get_rank()
    data = make_data(work / f"fsdp_data_{rank}")
    out = open(result_path, "a") if rank == 0 else None  # noqa: SIM115
    try:
        for family in families:
            if out is not None:
                out.write(json.dumps({"family": family, "event": "start"}) + "\n")
                out.flush()
            run_dir = work / family / "fsdp2"
            recipe, result = None, None
            try:
                overrides = recipe_overrides(
                    run_dir, data, 2,
                    f"--model.config={work / family / 'tiny_config'}",
                    "--+distributed.strategy=fsdp2", "--+distributed.device=cpu",
                    "--+checkpoint.save_final=false", "--step_scheduler.ckpt_every_steps=1000",
                    "--step_scheduler.val_every_steps=1000",
                )  # fmt: skip
                recipe = run_recipe(SFT_CONFIG, overrides)
                result = passed()
            except Exception as e:
                result = failed(reason(e), trace=traceback.format_exc(limit=-3))
            free(recipe)
            recipe = None
            results: list[Any] = [None] * dist.get_world_size()
            try:
                dist.all_gather_object(results, result)
            except Exception as e:  # the other rank is stuck in a collective of the recipe
                results = [result, failed(f"another rank did not answer: {reason(e)}")]
            failures = [r for r in results if r["status"] != "pass"]
            if not failures:
                losses = training_losses(run_dir)
                result = passed(losses=losses) if len(losses) == 2 and finite(losses) else (
                    failed(f"losses {losses}")
                )  # fmt: skip
            else:
                result = failures[0]
            if out is not None:
                out.write(json.dumps({"family": family, "fsdp2": result}) + "\n")
                out.flush()
            if failures:
                break
    finally:
        if out is not None:
            out.close()
        gc.collect()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error"}
    env["ARCHITECTURES_REPO"] = str(REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def last_line(path: Path) -> str:
    if not path.exists():
        return ""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else ""


def sweep_single(family: str, work: Path, timeout: float) -> dict[str, Any]:
    fam_dir = work / family
    fam_dir.mkdir(parents=True, exist_ok=True)
    result_path, log_path = fam_dir / "result.json", fam_dir / "worker.log"
    cmd = [sys.executable, str(work / "bin" / SCRIPT), "--worker", "single", "--family", family,
           "--workdir", str(fam_dir), "--result", str(result_path)]  # fmt: skip
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env(), start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
            problem = None if proc.returncode == 0 else f"worker died (exit {proc.returncode}): "
        except subprocess.TimeoutExpired:
            kill_group(proc)
            problem = f"timeout after {timeout:.0f} s"
    row = json.loads(result_path.read_text()) if result_path.exists() else {"family": family}
    if problem is not None:
        if problem.startswith("worker died"):
            problem += last_line(log_path)
        for key in COLUMNS:
            if key != "fsdp2" and key not in row:
                row[key] = failed(problem)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def sweep_fsdp(families: list[str], work: Path, timeout: float) -> dict[str, dict[str, Any]]:
    """FSDP2 column of `families`: one torchrun launch, a new one after a failure or a hang."""
    results: dict[str, dict[str, Any]] = {}
    remaining = list(families)
    launch = 0
    while remaining:
        launch += 1
        result_path = work / f"fsdp_{launch}.jsonl"
        log_path = work / f"fsdp_{launch}.log"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            str(work / "bin" / SCRIPT), "--worker", "fsdp", "--families", *remaining,
            "--workdir", str(work), "--result", str(result_path),
        ]  # fmt: skip
        print(f"FSDP2 launch {launch}: {len(remaining)} families", flush=True)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env(),
                start_new_session=True,
            )  # fmt: skip
            seen, last_change = 0, time.perf_counter()
            while proc.poll() is None:
                time.sleep(2)
                size = result_path.stat().st_size if result_path.exists() else 0
                if size != seen:
                    seen, last_change = size, time.perf_counter()
                elif time.perf_counter() - last_change > timeout:
                    kill_group(proc)
                    break
        rows = [json.loads(x) for x in result_path.read_text().splitlines()] if (
            result_path.exists()
        ) else []  # fmt: skip
        started = None
        for row in rows:
            if row.get("event") == "start":
                started = row["family"]
            elif "fsdp2" in row:
                results[row["family"]] = row["fsdp2"]
                print(f"  {row['family']}: {row['fsdp2']['status']}"
                      f" {row['fsdp2'].get('reason') or ''}", flush=True)  # fmt: skip
                started = None
        if started is not None:  # it hung or the launch died during this family
            why = f"timeout after {timeout:.0f} s" if proc.returncode in (None, -9) else (
                f"launch died (exit {proc.returncode}): {last_line(log_path)}"
            )  # fmt: skip
            results[started] = failed(why)
        elif not rows and proc.returncode != 0:  # nothing started: the launch itself failed
            for family in remaining:
                results[family] = failed(f"torchrun failed (exit {proc.returncode}): "
                                         f"{last_line(log_path)}")  # fmt: skip
        remaining = [f for f in remaining if f not in results]
    return results


# What the failures of a column have in common, found by a substring of their reason.
KNOWN_CAUSES = [
    (
        "lora",
        "peft-reloaded logits differ",
        "upstream in peft: for MoE model types that transformers 5 converts from its v4 "
        "layout, peft's loader rewrites every `target_modules` entry ending in `gate_proj`, "
        "`up_proj` or `down_proj` to the fused experts, so the adapters of dense MLPs and "
        "shared experts land on the experts instead (huggingface/peft#3711, fix in "
        "peft#3715). Our own `automodel.peft.load_adapter` reloads these adapters exactly "
        "(checked on afmoe, beam, inkling2_text, laguna, longcat_flash, qwen3_next, "
        "solar_open; DeepSeek-V3 in `tests/recipes/test_architectures.py`).",
    ),
    (
        "fsdp2",
        "is shared with a parameter already managed by another FSDP group",
        "ours to fix: an output head tied to a word embedding in a different submodule "
        "(BERT-style encoders, Zamba's shared block) needs both in one FSDP2 group.",
    ),
    (
        "checkpoint_reload",
        "Unrecognized configuration class",
        "the checkpoint holds the family's text config, which transformers' "
        "`AutoModelForCausalLM.from_pretrained` does not map; transformers' own "
        "save/load round trip of that model fails the same way.",
    ),
]


def cell(column: dict[str, Any] | None) -> str:
    if column is None:
        return "?"
    status, why = column.get("status"), column.get("reason") or ""
    why = why.replace("|", "\\|").replace("\n", " ")
    if len(why) > 240:
        why = why[:237] + "..."
    if status == "pass":
        return "✓"
    if status == "n/a":
        return why or "n/a"
    return f"✗ ({why})"


def totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out = {}
    for key in COLUMNS:
        counts = {"pass": 0, "fail": 0, "n/a": 0}
        for row in rows:
            status = (row.get(key) or {}).get("status", "fail")
            counts[status] = counts.get(status, 0) + 1
        out[key] = counts
    return out


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    import torch
    import transformers

    trainable = [r for r in rows if r["transformers"]["status"] == "pass"]
    untrainable = [r for r in rows if r["transformers"]["status"] != "pass"]
    tot = totals(rows)
    lines = [
        "# Supported model families",
        "",
        "Which Hugging Face causal-LM families the LLM recipe (`automodel finetune llm`) trains,",
        "checked on a tiny randomly initialised model of each family (2 layers, hidden size 64,",
        "vocabulary 128; a hybrid keeps one layer of every kind) built from the family's default",
        "config by `benchmarks/tiny_configs.py`. Generated by `benchmarks/architectures.py`:",
        "",
        f"- transformers {meta.get('transformers', transformers.__version__)}, "
        f"torch {meta.get('torch', torch.__version__)}, "
        f"{meta['date']}, CPU ({meta['families']} families, {meta['minutes']:.1f} min)",
        *[
            f"- rows rerun on {u['date']} (`--update`): " + ", ".join(u["families"])
            for u in meta.get("updates", [])
        ],
        f"- regenerate it with `{COMMAND}`; `--families llama gpt2 ...` checks a few",
        "  (`benchmarks/README.md`)",
        "",
        "## Legend",
        "",
        *[f"- **{header}**: {what}." for header, what in COLUMNS.values()],
        "- ✓: passed; ✗ (reason): failed, with the exception type and the first line of its",
        "  message; n/a: not run, and why.",
        "",
        "## Totals",
        "",
        "| | " + " | ".join(h for h, _ in COLUMNS.values()) + " |",
        "|---|" + "---|" * len(COLUMNS),
        "| ✓ | " + " | ".join(str(tot[k]["pass"]) for k in COLUMNS) + " |",
        "| ✗ | " + " | ".join(str(tot[k]["fail"]) for k in COLUMNS) + " |",
        "| n/a | " + " | ".join(str(tot[k]["n/a"]) for k in COLUMNS) + " |",
        "",
        f"{len(trainable)} of {len(rows)} families train with plain transformers from a tiny "
        "config; the other columns count those.",
        "",
        "## Support matrix",
        "",
        "| family | "
        + " | ".join(h for k, (h, _) in COLUMNS.items() if k != "transformers")
        + " |",
        "|---|" + "---|" * (len(COLUMNS) - 1),
    ]
    for row in trainable:
        cells = [cell(row.get(k)) for k in COLUMNS if k != "transformers"]
        lines.append(f"| {row['family']} | " + " | ".join(cells) + " |")
    lines += ["", "## Why the ✗", ""]
    for column, needle, explanation in KNOWN_CAUSES:
        hit = [
            r["family"]
            for r in trainable
            if (r.get(column) or {}).get("status") == "fail"
            and needle in ((r.get(column) or {}).get("reason") or "")
        ]
        if hit:
            lines.append(
                f"- **{COLUMNS[column][0]}** ({len(hit)}: {', '.join(hit)}): {explanation}"
            )
    lines += [
        "",
        "## Families transformers itself cannot train from a tiny config",
        "",
        "Plain `transformers.AutoModelForCausalLM.from_config` on the tiny config, then 3 AdamW",
        'steps, fails for these; "default config builds" says whether transformers builds the',
        "family's unchanged default config (on the meta device), i.e. whether the tiny config or",
        "transformers' defaults are at fault.",
        "",
        "| family | reason | default config builds |",
        "|---|---|---|",
    ]
    for row in untrainable:
        col = row["transformers"]
        why = (col.get("reason") or "").replace("|", "\\|")
        builds = col.get("default_builds") or "yes (the tiny model builds; training fails)"
        lines.append(f"| {row['family']} | {why} | {builds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", help="model types (default: every causal LM)")
    parser.add_argument("--out", type=Path, help="JSON file: one row per family")
    parser.add_argument("--md", type=Path, help=f"markdown matrix (default {DOCS.relative_to(REPO)}"
                        " when every family ran)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600, help="seconds per family and check")
    parser.add_argument("--no-fsdp", action="store_true", help="skip the FSDP2 column")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only write --md (default "
        f"{DOCS.relative_to(REPO)}) from an earlier run's --out file",
    )  # fmt: skip
    parser.add_argument(
        "--update", type=Path, metavar="JSON", help="run --families again and replace their "
        "rows in an earlier run's --out file; --md (default docs/models.md) from all its rows",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("single", "fsdp"), help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "single":
        return run_single(args.family, args.workdir, args.result)
    if args.worker == "fsdp":
        return run_fsdp(args.families, args.workdir, args.result)

    if args.render is not None:
        saved = json.loads(args.render.read_text())
        (args.md or DOCS).write_text(markdown(saved["rows"], saved["meta"]))
        return print(f"wrote {args.md or DOCS}")

    from tiny_configs import CAUSAL_LM_TYPES

    if args.update is not None and not args.families:
        parser.error("--update needs --families")
    families = args.families or CAUSAL_LM_TYPES
    unknown = [f for f in families if f not in CAUSAL_LM_TYPES]
    if unknown:
        parser.error(f"not causal-LM model types: {unknown}")
    work = Path(tempfile.mkdtemp(prefix="architectures_"))
    print(f"work directory: {work}", flush=True)
    (work / "bin").mkdir()  # the workers run a copy: editing the scripts leaves a sweep alone
    for name in (SCRIPT, "tiny_configs.py"):
        shutil.copy(Path(__file__).with_name(name), work / "bin" / name)
    start = time.perf_counter()
    rows = []
    for i, family in enumerate(families, 1):
        row = sweep_single(family, work, args.timeout)
        reasons = " ".join((row.get(k) or {}).get("reason") or "" for k in COLUMNS)
        if any(t in reasons for t in TRANSIENT):
            print(f"    {family}: the source tree looked half-edited; once more", flush=True)
            shutil.rmtree(work / family, ignore_errors=True)
            row = sweep_single(family, work, args.timeout)
        rows.append(row)
        summary = " ".join(
            f"{COLUMNS[k][0]}={row[k]['status']}" for k in COLUMNS if k in row and k != "fsdp2"
        )
        print(f"[{i}/{len(families)}] {family} ({row['seconds']:.0f} s): {summary}", flush=True)
        for k in COLUMNS:
            if k in row and row[k]["status"] == "fail":
                print(f"    {COLUMNS[k][0]}: {row[k]['reason']}", flush=True)
    trainable = [r["family"] for r in rows if r["transformers"]["status"] == "pass"]
    if args.no_fsdp:
        fsdp = {f: not_applicable("n/a (not run)") for f in trainable}
    else:
        fsdp = sweep_fsdp(trainable, work, args.timeout)
    for row in rows:
        row["fsdp2"] = fsdp.get(row["family"], not_applicable(NOT_TRAINABLE))
    minutes = (time.perf_counter() - start) / 60
    import torch
    import transformers

    meta = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "families": len(rows),
        "minutes": minutes,
    }
    full_set = args.families is None
    if args.update is not None:  # the earlier run's rows, these families' replaced
        saved = json.loads(args.update.read_text())
        new = {r["family"]: r for r in rows}
        rows = [new.pop(r["family"], r) for r in saved["rows"]] + list(new.values())
        update = {k: meta[k] for k in ("date", "minutes", "transformers", "torch")}
        meta = {**saved["meta"], "families": len(rows)}
        meta["updates"] = [*saved["meta"].get("updates", []), {**update, "families": families}]
        args.out, full_set = args.out or args.update, True
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, {"meta": meta, "totals": totals(rows), "rows": rows})
    md_path = args.md or (DOCS if full_set else None)
    if md_path is not None:
        md_path.write_text(markdown(rows, meta))
        print(f"wrote {md_path}")
    print(f"\n{len(families)} families in {minutes:.1f} min; totals of all {len(rows)}:")
    for key, counts in totals(rows).items():
        print(f"  {COLUMNS[key][0]:12s} pass {counts['pass']:3d}  fail {counts['fail']:3d}"
              f"  n/a {counts['n/a']:3d}")  # fmt: skip
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
