"""Batches for vision-language models: a processor's chat template and images, labels on answers.

The assistant turns are found in the text the chat template renders (`assistant_char_spans`:
by rendering the conversation up to each turn), not from any model's special tokens, so one
collator serves every processor. Their characters become token labels on the text as the
tokenizer splits it; the processor then expands each image placeholder into the model's image
tokens (a run of them, a grid with separators, or wrapped in newlines that merge with the
text around them, as Gemma 3's), and the labels follow the tokens that were there before,
the inserted ones labeled IGNORE_INDEX. A labeled token the expansion changed is an error,
never a silently dropped label.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch

from ..losses import IGNORE_INDEX
from ._chat import assistant_char_spans, chat_template_of, labels_in_spans
from ._errors import DataError


class VisionChatCollator:
    """`collate(samples)` for `ImageChatDataset` items: the processor's tensors (input ids,
    attention mask, pixel values and whatever else the model takes) plus unshifted labels."""

    def __init__(
        self,
        processor: Any,
        chat_template: str | None = None,
        assistant_prefix: str | None = None,
    ):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "right"  # training: positions count from each row's start
        self.chat_template = chat_template_of(processor, chat_template, "processor")
        # text the model writes at the start of every answer (e.g. Gemma 4's empty thinking
        # channel): put before each assistant turn's text, with no loss on it
        self.assistant_prefix = assistant_prefix or ""

    def render(self, messages: list, generation_prompt: bool) -> str:
        """The conversation as the chat template writes it (image parts as placeholders)."""
        return self.processor.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts, plain = [], []  # rendered text; (ids, labels) before image expansion
        for sample in samples:
            text, spans = assistant_char_spans(self.render, sample["messages"])
            text, spans = _prefixed(text, spans, self.assistant_prefix)
            encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(encoding["input_ids"])
            texts.append(text)
            plain.append((ids, labels_in_spans(ids, encoding["offset_mapping"], spans)))
        images = [sample["images"] for sample in samples]
        batch = self.processor(
            text=texts,
            images=images if any(images) else None,
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for row, (ids, row_labels) in enumerate(plain):
            length = int(batch["attention_mask"][row].sum())
            expanded = batch["input_ids"][row, :length].tolist()
            labels[row, :length] = torch.tensor(_follow(ids, row_labels, expanded, row))
        return {**batch, "labels": labels}


def _prefixed(
    text: str, spans: list[tuple[int, int]], prefix: str
) -> tuple[str, list[tuple[int, int]]]:
    """`text` with `prefix` put at the start of every span, and the spans (the prefix not in
    them) where they moved to."""
    if not prefix:
        return text, spans
    pieces, moved, last = [], [], 0
    for start, end in spans:
        pieces += [text[last:start], prefix]
        shift = len(prefix) * (len(moved) + 1)
        moved.append((start + shift, end + shift))
        last = start
    return "".join([*pieces, text[last:]]), moved


def _follow(ids: list[int], labels: list[int], expanded: list[int], row: int) -> list[int]:
    """Labels for `expanded` (ids with image tokens inserted): each token of `ids` found in
    order takes its label, every inserted one IGNORE_INDEX.

    Greedy matching covers insertions; when the expansion also re-tokenized text around an
    image (newlines merged), the longest common blocks of the two sequences decide instead.
    """
    out, j = [], 0
    for token in expanded:
        if j < len(ids) and token == ids[j]:
            out.append(labels[j])
            j += 1
        else:
            out.append(IGNORE_INDEX)
    if j == len(ids):
        return out
    out = [IGNORE_INDEX] * len(expanded)
    matched = [False] * len(ids)
    blocks = difflib.SequenceMatcher(None, ids, expanded, autojunk=False).get_matching_blocks()
    for a, b, size in blocks:
        out[b : b + size] = labels[a : a + size]
        matched[a : a + size] = [True] * size
    lost = [i for i, label in enumerate(labels) if label != IGNORE_INDEX and not matched[i]]
    if lost:
        raise DataError(
            f"row {row} of a batch: the processor tokenized {len(lost)} answer token(s) "
            f"differently from the chat template's text (token positions {lost[:5]}), so "
            "their labels cannot be placed; the processor and its tokenizer must tokenize "
            "the answers alike"
        )
    return out
