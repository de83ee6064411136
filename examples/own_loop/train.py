"""Your own training loop, composed from AutoModel's component packages (no recipe, no YAML).

    uv run python examples/own_loop/train.py                              # one process
    uv run torchrun --nproc-per-node 2 examples/own_loop/train.py         # FSDP2 over 2
    uv run python examples/own_loop/train.py --lora --run-dir runs/own_loop_lora

It fine-tunes the repo's tiny Llama on the word-reversal chat data, offline: chat data packed
into rows (automodel.core), FSDP2 over every process (automodel.distributed), optional LoRA
(automodel.peft), a checkpoint every `--save-every` steps that a rerun resumes from exactly,
and a final model folder that transformers (or PEFT, with --lora) loads (automodel.checkpoint).
"""

import argparse
import contextlib
import itertools
from pathlib import Path

from automodel.checkpoint import HF_WEIGHTS, PEFT_ADAPTER, Checkpointer
from automodel.core.data import build_dataloader, chat_dataset, pack_dataset
from automodel.core.losses import (
    FusedLinearCrossEntropy,
    FusedLossModel,
    count_label_tokens,
    shift_labels,
)
from automodel.core.models import AutoModelForCausalLM, load_tokenizer
from automodel.core.optim import build_lr_scheduler, build_optimizer
from automodel.core.training import GlobalRngState, clip_grad_norm, set_seed
from automodel.distributed import (
    MeshConfig,
    all_reduce_sum,
    build_mesh,
    build_strategy,
    destroy_distributed,
    dp_group,
    dp_rank_and_size,
    global_label_tokens,
    init_distributed,
    is_main_process,
    no_sync,
)
from automodel.peft import LoraConfig, adapter_config, apply_lora, write_adapter_config

ASSETS = Path(__file__).resolve().parents[1] / "llm_finetune" / "assets"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--run-dir", type=Path, default=Path("runs/own_loop"))
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--save-every", type=int, default=20)
parser.add_argument("--global-batch", type=int, default=8, help="rows per optimizer step")
parser.add_argument("--local-batch", type=int, default=2, help="rows per micro-batch")
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--lora", action="store_true", help="train LoRA adapters only")
parser.add_argument("--stop-after", type=int, help="stop after this step, as if interrupted")
args = parser.parse_args()

# Processes, mesh, and what this rank reads (gloo on CPU, nccl on GPUs).
env = init_distributed()
mesh = build_mesh(MeshConfig())  # every process data parallel
dp_rank, dp_size = dp_rank_and_size(mesh)
group = dp_group(mesh, include_cp=True)
accumulate = args.global_batch // (args.local_batch * dp_size)  # micro-batches per step
set_seed(1234)  # the same initial weights on every rank

# Model (random weights from the repo's config), or LoRA on a base; the fused loss; FSDP2.
tokenizer = load_tokenizer(ASSETS / "tiny_tokenizer")
model = AutoModelForCausalLM.from_config(ASSETS / "tiny_llama", seed=1234)
adapter = None
if args.lora:  # adapters on the repo's small pre-trained base, which PEFT loads them onto
    model = AutoModelForCausalLM.from_pretrained(ASSETS / "tiny_llama_base")
    apply_lora(model, LoraConfig(target_modules=["*.q_proj", "*.v_proj"], dim=8, alpha=16))
    adapter = adapter_config(model, base_model_name_or_path=str(ASSETS / "tiny_llama_base"))
config = model.config
train_model = FusedLossModel(model, FusedLinearCrossEntropy())  # never builds full logits
train_model = build_strategy("fsdp2").parallelize(train_model, mesh)
optimizer = build_optimizer(model, {"_target_": "torch.optim.AdamW", "lr": args.lr, "weight_decay": 0.01})  # fmt: skip
scheduler = build_lr_scheduler(optimizer, args.steps, warmup_steps=args.steps // 10, style="cosine", min_lr=args.lr / 10)  # fmt: skip

# Chat data, loss on the assistant turns, packed into 128-token rows; this rank's shard.
rows = chat_dataset(tokenizer, ASSETS / "reverse_train.jsonl", seq_length=64)
rows = pack_dataset(rows, 128, pad_token_id=tokenizer.pad_token_id)
loader = build_dataloader(rows, args.local_batch, seed=1234, dp_rank=dp_rank, dp_size=dp_size)

# Checkpoints: the whole training state; a rerun continues from the newest one.
checkpointer = Checkpointer(args.run_dir / "checkpoints", keep_last_n=2, weights_format=PEFT_ADAPTER if args.lora else HF_WEIGHTS)  # fmt: skip
states = {
    "optim_states": {"lr_scheduler": scheduler},  # saved once
    "train_states": {"dataloader": loader, "rng": GlobalRngState()},  # saved per rank
}
step = 0
if (latest := checkpointer.latest()) is not None:
    step = checkpointer.restore(latest, model=model, optimizer=optimizer, **states).step
    if is_main_process():
        print(f"resumed from {latest}")


def model_files(checkpoint: Path) -> None:
    """Beside the weights: what transformers (or PEFT) needs to load model/ on its own."""
    (checkpoint / "model").mkdir(parents=True, exist_ok=True)
    if adapter is not None:
        write_adapter_config(checkpoint / "model", adapter)
    else:
        config.save_pretrained(checkpoint / "model")
    tokenizer.save_pretrained(checkpoint / "model")


batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
while step < args.steps:
    micro_batches = [next(batches) for _ in range(accumulate)]
    labels = [shift_labels(mb.pop("labels")) for mb in micro_batches]
    tokens = global_label_tokens(sum(int(count_label_tokens(lab)) for lab in labels), group)
    loss_sum = 0.0
    for i, (inputs, lab) in enumerate(zip(micro_batches, labels, strict=True)):
        inputs = {k: v.to(env.device) for k, v in inputs.items()}
        with contextlib.nullcontext() if i == accumulate - 1 else no_sync(train_model):
            loss = train_model(inputs, lab.to(env.device), tokens)  # sum over the step's tokens
            (loss * dp_size).backward()  # the strategy averages over dp: exact global mean
        loss_sum += loss.item()
    grad_norm = clip_grad_norm([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    loss_value = all_reduce_sum(loss_sum, group)
    if is_main_process():
        print(f"step {step} loss {loss_value!r} grad_norm {float(grad_norm):.4f}")
    if step % args.save_every == 0 or step == args.steps:
        path = checkpointer.save(0, step, model=model, optimizer=optimizer, write_extras=model_files, **states)  # fmt: skip
    if step == args.stop_after:
        break

if is_main_process() and step == args.steps:
    print(f"final model: {path / 'model'}")
checkpointer.close()
del train_model, model, optimizer, mesh
destroy_distributed()
