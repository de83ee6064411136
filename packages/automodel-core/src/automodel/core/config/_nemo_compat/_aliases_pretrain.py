"""The pre-training part of the alias table: their token datasets (Megatron indexed data,
NanoGPT shards, random rows) and their NanoGPT-style GPT-2 builder."""

from __future__ import annotations

from ._alias import Alias

MOCK_DATA = "nemo_automodel.components.datasets.llm.mock_iterable_dataset.MockIterableDataset"

PRETRAIN_ALIASES: dict[str, Alias] = {
    # random token rows, as theirs (not the same ids: drawn by another generator); under
    # benchmark.llm the section goes first (it makes its own rows; see benchmark_data)
    MOCK_DATA: Alias(
        "automodel.core.data.synthetic_text_dataset",
        args={"seq_len": "seq_length"},
        refused={
            "batch_size": (
                (1, None),
                "rows per micro-batch are step_scheduler.local_batch_size here; drop batch_size",
            )
        },
        defaults={"vocab_size": 1024, "seq_length": 1024, "num_samples": 1000000},
    ),
    "nemo_automodel.components.datasets.llm.mock.build_unpacked_dataset": Alias(
        "automodel.core.data.synthetic_text_dataset",
        args={
            "num_sentences": "num_samples",
            "mean_len": "seq_length",
            "std_len": "length_std",
            "max_sentence_len": "max_length",
        },
        defaults={
            "num_samples": 10,
            "seq_length": 20,
            "length_std": 6.0,
            "vocab_size": 100,
            "max_length": 64,
        },
        note="rows end with the tokenizer's EOS inside their drawn length (theirs: id 1 after it)",
    ),
    "nemo_automodel.components.datasets.llm.megatron_dataset.MegatronPretraining": Alias(
        "automodel.core.data.indexed_dataset",
        args={
            "splits_to_build": "part",
            "index_mapping_dir": "index_cache_dir",
            "num_train_samples": "num_samples",
            "num_val_samples": "num_samples",
            "num_test_samples": "num_samples",
        },
        dropped={
            "tokenizer": "the recipe's tokenizer checks the corpus",
            "num_dataset_builder_threads": "how fast the sample index is built",
            "mmap_bin_files": "how the token file is read",
            "micro_batch_size": "batches are step_scheduler's",
            "global_batch_size": "batches are step_scheduler's",
        },
        refused={
            "create_attention_mask": ((False,), "causal attention needs no mask here; drop it"),
            "object_storage_config": ((None,), "read the files from a local or mounted path"),
        },
        defaults={"split": "900,50,50", "seed": 1234},
        note=(
            "the same seq_length-token training windows over the same documents of each split "
            "part; the order of documents and windows is this library's own seeded shuffle, "
            "not Megatron's sample index"
        ),
        token_windows=True,
    ),
    "nemo_automodel.components.datasets.llm.nanogpt_dataset.NanogptDataset": Alias(
        "automodel.core.data.nanogpt_dataset",
        note=(
            "the same windows of seq_len + 1 tokens, shard by shard; each data-parallel rank "
            "reads its share of every window in the sampler's order (theirs: shards or token "
            "ranges per rank and worker), and shuffle_files draws one seeded shard order"
        ),
    ),
    # their pure-PyTorch GPT-2: transformers' GPT-2 with the same blocks
    "nemo_automodel.components.models.gpt2.build_gpt2_model": Alias(
        "automodel.core.models.AutoModelForCausalLM.from_config",
        args={"n_ctx": "n_positions"},
        dropped={"attn_implementation": "their GPT-2 runs torch's SDPA whatever it says"},
        defaults={
            "config": {"model_type": "gpt2"},
            "n_positions": 2048,
            "activation_function": "gelu",  # their nn.GELU(): exact, not the tanh form
            "resid_pdrop": 0.0,  # their blocks drop out embeddings and attention only
        },
        note=(
            "transformers' GPT-2 has their blocks (pre-norm, exact GELU, biases, a tied head, "
            "dropout 0.1 on embeddings and attention); it is initialised as transformers "
            "initialises GPT-2 (residual projections scaled by 1/sqrt(2 x n_layer)), theirs "
            "without that scaling"
        ),
    ),
}
