"""Batches for vision-language models: a processor's chat template and images, labels on answers.

The assistant turns are found in the text the chat template renders (`assistant_char_spans`:
by rendering the conversation up to each turn), not from any model's special tokens, so one
collator serves every processor. Their characters become token labels on the text as the
tokenizer splits it; the processor then expands each image placeholder into the model's image
tokens (a run of them, or a grid with separators), and the labels follow the tokens that were
there before, the inserted ones labeled IGNORE_INDEX.
"""

from __future__ import annotations

from typing import Any

import torch

from ..losses import IGNORE_INDEX
from ._chat import assistant_char_spans, labels_in_spans
from ._errors import DataError


class VisionChatCollator:
    """`collate(samples)` for `ImageChatDataset` items: the processor's tensors (input ids,
    attention mask, pixel values and whatever else the model takes) plus unshifted labels."""

    def __init__(self, processor: Any, chat_template: str | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "right"  # training: positions count from each row's start
        self.chat_template = chat_template or getattr(processor, "chat_template", None)
        if not self.chat_template:
            raise DataError(
                "the processor has no chat template; use a chat/instruct model's processor or "
                "pass chat_template"
            )

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


def _follow(ids: list[int], labels: list[int], expanded: list[int], row: int) -> list[int]:
    """Labels for `expanded` (ids with image tokens inserted): each token matching the next of
    `ids` takes its label, every inserted one IGNORE_INDEX."""
    out, j = [], 0
    for token in expanded:
        if j < len(ids) and token == ids[j]:
            out.append(labels[j])
            j += 1
        else:
            out.append(IGNORE_INDEX)
    if j != len(ids):
        raise DataError(
            f"row {row} of a batch: the processor's tokens do not contain the chat template's "
            f"text in order ({j} of {len(ids)} tokens found); the processor and its tokenizer "
            "must tokenize text alike"
        )
    return out
