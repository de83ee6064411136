"""Their section-level key names and ours: renames, drops and the names each side knows."""

from __future__ import annotations

# Their section-level keys -> ours: (section, their key) -> (section, our key).
KEY_RENAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("step_scheduler", "val_check_interval"): ("step_scheduler", "val_every_steps"),
    ("step_scheduler", "checkpoint_interval"): ("step_scheduler", "ckpt_every_steps"),
    ("step_scheduler", "log_interval"): ("step_scheduler", "log_every_steps"),
    ("step_scheduler", "grad_accumulation_steps"): ("step_scheduler", "grad_acc_steps"),
    ("checkpoint", "save_every_steps"): ("step_scheduler", "ckpt_every_steps"),
    # where the benchmark's summary JSON goes (its fields are ours: docs/benchmark_recipe.md)
    ("benchmark", "json_output_path"): ("benchmark", "summary_file"),
    ("lr_scheduler", "lr_decay_style"): ("lr_scheduler", "style"),
    ("lr_scheduler", "lr_warmup_steps"): ("lr_scheduler", "warmup_steps"),
    ("dist_env", "timeout_minutes"): ("distributed", "timeout_minutes"),
    ("wandb", "save_dir"): ("wandb", "dir"),
    # their per-layer torch.compile of the decoder layers: the same computation compiled
    ("distributed", "enable_compile"): ("compile", "enabled"),
}

# Their keys we drop, each with why that cannot change results.
KEY_DROPS: dict[tuple[str, str], str] = {
    ("dist_env", "backend"): "the process-group backend follows the device (nccl on GPU)",
    ("step_scheduler", "gc_every_steps"): "Python garbage collection timing",
    ("step_scheduler", "loss_average_window_steps"): "a rolling mean of the logged loss",
    ("step_scheduler", "log_remote_every_steps"): "remote loggers get every logged step",
    ("step_scheduler", "save_checkpoint_every_epoch"): "when checkpoints are written",
    ("checkpoint", "save_consolidated"): "checkpoints here always hold the HF safetensors model",
    ("compile", "backend"): "null is the default backend (inductor)",
    ("distributed", "enable_fsdp2_prefetch"): "when FSDP2 gathers the next layers' weights",
    ("distributed", "fsdp2_backward_prefetch_depth"): "when FSDP2 gathers the next layers' weights",
    ("distributed", "fsdp2_forward_prefetch_depth"): "when FSDP2 gathers the next layers' weights",
    ("distributed", "enable_async_tensor_parallel"): "overlaps tensor-parallel communication "
    "with compute",
    ("distributed", "patch_is_packed_sequence"): "skips a host sync in transformers' packed-row "
    "check",
    ("distributed", "multimodal"): "how a VLM's frozen towers are sharded (per layer or "
    "replicated) and its vision frames spread over context-parallel ranks: the same computation",
}

# Their whole sections we drop, each with why that cannot change results.
SECTION_DROPS: dict[str, str] = {
    "nvtx": "NVTX ranges for Nsight profiles",
    "prewarm": "kernel autotuning before the first step",
    "longalign": "none of their code reads it",
}

_LR_STYLES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "WSD": "wsd"}

# Their known key names per section (for "did you mean" on a typo in their spelling).
_THEIR_KEYS = {
    "step_scheduler": [
        "global_batch_size",
        "local_batch_size",
        "grad_acc_steps",
        "ckpt_every_steps",
        "val_every_steps",
        "max_steps",
        "num_epochs",
        "gc_every_steps",
        "log_remote_every_steps",
        "val_check_interval",
        "checkpoint_interval",
        "log_interval",
        "grad_accumulation_steps",
        "save_checkpoint_every_epoch",
        "loss_average_window_steps",
    ],
    "checkpoint": [
        "enabled",
        "checkpoint_dir",
        "model_save_format",
        "save_consolidated",
        "restore_from",
        "save_every_steps",
    ],
    "dist_env": ["backend", "timeout_minutes"],
    "lr_scheduler": ["lr_decay_style", "lr_warmup_steps", "min_lr"],
}

# Our own keys of the sections above (a typo check must not flag them).
_OURS: dict[str, tuple[str, ...]] = {
    "step_scheduler": (
        "global_batch_size", "local_batch_size", "grad_acc_steps", "max_steps", "num_epochs",
        "val_every_steps", "ckpt_every_steps", "log_every_steps",
    ),
    "checkpoint": (
        "checkpoint_dir", "max_shard_size", "save_final", "restore_from", "keep_last_n",
        "save_merged_model", "async_save", "preempt_signals",
    ),
    "lr_scheduler": ("warmup_steps", "style", "min_lr", "decay_fraction"),
}  # fmt: skip

# Their hard-negative mining keys (`mining:` of their MineHardNegativesRecipe) -> ours, for the
# keys that mean the same here; the others are handled one by one in `_translate_retrieval`.
MINING_RENAMES = {
    "model_name_or_path": "model",
    "train_file_output_path": "output",
    "hard_negatives_to_mine": "num_negatives",
    "hard_neg_margin": "margin",
    "hard_neg_margin_type": "margin_type",
    "corpus_chunk_size": "chunk_size",
    "cache_embeddings_dir": "cache_dir",
}
# Their mining keys that only say how fast or in what memory the same result is computed.
MINING_DROPS = {
    "mining_batch_size": "how many queries are scored at once",
    "query_embedding_batch_size": "how many texts are embedded at once (here mining.batch_size)",
    "document_embedding_batch_size": "how many texts are embedded at once (here mining.batch_size)",
    "load_embeddings_from_cache": "corpus embeddings are reused whenever the model and corpus match",
    "attn_implementation": "an attention-kernel choice for the same computation",
}
MINING_KEYS = (
    *MINING_RENAMES,
    *MINING_DROPS,
    "train_qa_file_path",
    "tokenizer_name_or_path",
    "add_bos_token",
    "add_eos_token",
    "use_negatives_from_file",
    "query_prefix",
    "passage_prefix",
    "query_max_length",
    "passage_max_length",
)
_THEIR_KEYS["mining"] = list(MINING_KEYS)
_OURS["mining"] = (
    "model", "queries", "corpus", "output", "top_k", "num_negatives", "min_negatives", "margin",
    "margin_type", "search", "batch_size", "chunk_size", "cache_dir", "overwrite", "device",
)  # fmt: skip
