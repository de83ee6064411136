"""Tests of packing: row layout, labels at document starts, efficiency, and no cross-document attention."""

from __future__ import annotations

import logging

import pytest
import torch

from automodel.core.data import (
    IGNORE_INDEX,
    DataError,
    PackedDataset,
    TokenizedDataset,
    block_causal_mask,
    collate,
    document_ids,
    pack_dataset,
)
from automodel.core.data._dataset import SampleBuffer

PAD = 0


def make_dataset(docs: list[list[int]], *, all_labeled: bool = True) -> TokenizedDataset:
    buffer = SampleBuffer()
    for doc in docs:
        labels = doc if all_labeled else [IGNORE_INDEX] * (len(doc) // 2) + doc[len(doc) // 2 :]
        buffer.add(input_ids=doc, labels=labels)
    columns, offsets = buffer.tensors()
    return TokenizedDataset(columns, offsets, pad_token_id=PAD)


def split_row(row: dict) -> list[tuple[int, int]]:
    """(start, end) of each segment of a packed row, padding included, from its position_ids."""
    ids = document_ids(row["position_ids"]).tolist()
    bounds = [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
    starts = [0, *bounds]
    return list(zip(starts, [*bounds, len(ids)], strict=True))


def test_rows_hold_whole_documents_with_restarting_positions(caplog) -> None:
    docs = [list(range(10 + i, 10 + i + n)) for i, n in enumerate([5, 3, 7, 2, 6, 1, 4])]
    with caplog.at_level(logging.INFO, logger="automodel.core.data"):
        packed = pack_dataset(make_dataset(docs), packed_sequence_size=8)
    assert isinstance(packed, PackedDataset)
    total = sum(len(d) for d in docs)  # 28 tokens
    assert len(packed) == 4  # best fit: 7+1, 6+2, 5+3, 4 (+padding)
    assert packed.efficiency == pytest.approx(total / (4 * 8))
    assert f"packing efficiency {100 * total / 32:.1f}%" in caplog.text

    seen = []
    for row in packed:
        assert {k: v.shape for k, v in row.items()} == {
            k: torch.Size([8]) for k in ("input_ids", "labels", "position_ids")
        }
        used = 0
        for start, end in split_row(row):
            tokens = row["input_ids"][start:end].tolist()
            assert row["position_ids"][start:end].tolist() == list(range(end - start))
            if tokens in docs:
                seen.append(tokens)
                used = end
                # The first token of each document is never a target (it would be predicted
                # from the previous document); the rest keep their labels.
                assert row["labels"][start].item() == IGNORE_INDEX
                assert row["labels"][start + 1 : end].tolist() == tokens[1:]
            else:  # padding: at the end only, no labels
                assert start == used and tokens == [PAD] * (end - start)
                assert (row["labels"][start:end] == IGNORE_INDEX).all()
    assert sorted(seen) == sorted(docs)


def test_max_packs_packs_the_first_documents_in_order(caplog) -> None:
    """`max_packs`: documents in dataset order, a row closing when the next does not fit (NeMo
    AutoModel's serial packing), at most max_packs rows; later documents are left out."""
    docs = [list(range(10 + i, 10 + i + n)) for i, n in enumerate([5, 3, 7, 2, 6, 1, 4])]
    with caplog.at_level(logging.INFO, logger="automodel.core.data"):
        packed = pack_dataset(make_dataset(docs), packed_sequence_size=8, max_packs=3)
    rows = [[row["input_ids"][a:b].tolist() for a, b in split_row(row)] for row in packed]
    assert rows == [[docs[0], docs[1]], [docs[2], [PAD]], [docs[3], docs[4]]]
    assert packed.num_documents == 5 and packed.efficiency == pytest.approx(23 / 24)
    assert "max_packs 3: the first 5 of 7 documents packed, the rest left out" in caplog.text
    everything = pack_dataset(make_dataset(docs), packed_sequence_size=8, max_packs=10)
    assert everything.num_documents == 7 and len(everything) == 4
    assert everything[3]["input_ids"][:5].tolist() == docs[5] + docs[6]  # in order, not best fit
    with pytest.raises(DataError, match="pack_dataset: max_packs must be an integer >= 1, got 0"):
        pack_dataset(make_dataset(docs), packed_sequence_size=8, max_packs=0)


def test_prompt_masks_survive_packing() -> None:
    docs = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    packed = pack_dataset(make_dataset(docs, all_labeled=False), packed_sequence_size=12)
    row = packed[0]
    assert row["labels"].tolist() == [-100, -100, 7, 8, -100, -100, -100, 12, 13, 14, -100, -100]
    assert row["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1]


def test_document_longer_than_row_is_an_error() -> None:
    with pytest.raises(DataError, match="sample 1 has 9 tokens, more than packed_sequence_size=8"):
        pack_dataset(make_dataset([[1, 2], list(range(9))]), packed_sequence_size=8)


def test_collate_keeps_positions_and_omits_attention_mask() -> None:
    packed = pack_dataset(make_dataset([[1, 2, 3], [4, 5], [6, 7, 8, 9]]), packed_sequence_size=5)
    batch = collate([packed[0], packed[1]], pad_token_id=PAD)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["position_ids"].shape == (2, 5)


# ------------------------------------------------- packed == separate, on a real model


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position loss of predicting labels[t + 1] from position t (NaN where ignored)."""
    targets = torch.cat([labels[1:], torch.tensor([IGNORE_INDEX])])
    losses = torch.nn.functional.cross_entropy(
        logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return torch.where(targets == IGNORE_INDEX, torch.nan, losses)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_loss_equals_separate_documents(attn_implementation: str, tiny_llama_config) -> None:
    from transformers import LlamaForCausalLM

    generator = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 64, (n,), generator=generator).tolist() for n in (7, 5, 9, 4)]
    packed = pack_dataset(make_dataset(docs), packed_sequence_size=16)
    batch = collate(list(packed), pad_token_id=PAD)
    torch.manual_seed(0)
    config = tiny_llama_config(max_position_embeddings=64)
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config).eval()

    with torch.no_grad():
        # use_cache=False matters: with a cache (the default from the config), transformers does
        # not look for packed sequences in position_ids and documents attend to each other.
        out = model(**batch, use_cache=False)
        custom = model(
            input_ids=batch["input_ids"],
            attention_mask=block_causal_mask(batch["position_ids"]),
            position_ids=batch["position_ids"],
        )
    compared = 0
    all_losses = []
    for r in range(len(batch["input_ids"])):
        row_losses = token_losses(out.logits[r], batch["labels"][r])
        all_losses.append(row_losses)
        for start, end in split_row({"position_ids": batch["position_ids"][r]}):
            tokens = batch["input_ids"][r, start:end].tolist()
            if tokens not in docs:
                assert row_losses[start:end].isnan().all()  # padding
                continue
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([tokens])).logits[0]
            expected = token_losses(alone, torch.tensor(tokens))
            # The last token of a document predicts nothing (next document's first label is -100).
            assert row_losses[start:end].isnan().tolist() == expected.isnan().tolist()
            torch.testing.assert_close(row_losses[start:end], expected, equal_nan=True)
            torch.testing.assert_close(out.logits[r, start:end], alone, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(custom.logits[r, start:end], alone, rtol=1e-4, atol=1e-5)
            compared += 1
    assert compared == len(docs)
    # The model's own (shifting) loss is the mean of exactly these per-token losses.
    torch.testing.assert_close(out.loss, torch.cat(all_losses).nanmean())

    # Controls: with a cache, or with a 2-D attention mask, transformers does not detect the
    # packed documents and they see each other. This is why collate omits the attention mask.
    with torch.no_grad():
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        masked = model(**batch, attention_mask=torch.ones_like(batch["input_ids"]), use_cache=False)
    assert not torch.allclose(cached, out.logits, atol=1e-4)
    assert not torch.allclose(masked.logits, out.logits, atol=1e-4)


# ------------------------------------------------- padding-free batches


def test_padding_free_collate_puts_the_samples_end_to_end() -> None:
    samples = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [8, 9], "labels": [8, 9]},  # its first label is never a target
    ]
    batch = collate(samples, pad_token_id=PAD, padding_free=True)
    assert {k: v.tolist() for k, v in batch.items()} == {
        "input_ids": [[5, 6, 7, 8, 9]],
        "labels": [[-100, 6, 7, -100, 9]],
        "position_ids": [[0, 1, 2, 0, 1]],
    }
    assert samples[1]["labels"] == [8, 9]  # the samples are left as they were
    wide = collate(samples, pad_token_id=PAD, padding_free=True, pad_to_multiple_of=4)
    assert wide["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]  # padding: its own document
    with pytest.raises(DataError, match="concatenate documents, not rows"):
        collate([pack_dataset(make_dataset([[1, 2]]), 4)[0]], padding_free=True)


def test_which_models_keep_documents_apart(tiny_llama_config) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    from automodel.core.models import document_masking_problem

    llama = LlamaForCausalLM(tiny_llama_config())
    assert document_masking_problem(llama, rows=4) is None  # sdpa: a block-causal mask per row
    llama.config._attn_implementation = "flash_attention_2"
    assert document_masking_problem(llama) is None  # one row: a varlen sequence per document
    assert "only in a batch of one row" in document_masking_problem(llama, rows=2)
    small = {"hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 64}
    mamba = AutoModelForCausalLM.from_config(AutoConfig.for_model("mamba", **small))
    assert "masking_utils" in document_masking_problem(mamba)
    hybrid = AutoConfig.for_model(
        "qwen3_next", **small, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, num_experts=2, moe_intermediate_size=8, head_dim=8,
    )  # fmt: skip
    problem = document_masking_problem(AutoModelForCausalLM.from_config(hybrid))
    assert "linear_attention layers, which carry a state" in problem
