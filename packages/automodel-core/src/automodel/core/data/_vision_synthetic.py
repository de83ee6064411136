"""Synthetic image-text conversations: random-noise images and filler answers, for timing a
vision-language model's training steps without any data (nothing is read or downloaded)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ._errors import DataError, check_count
from ._vision import _require_pil

# filler for the answers: short common words, so token counts track word counts closely
_FILLER = (
    "a bright red kite flies high over the calm sea while two small boats drift near the old "
    "stone pier and gulls call from the warm sand as the day ends in soft gold light over hills"
)


class SyntheticImageChats(Dataset):
    """`num_samples` one-turn conversations, each built from its own seed when read (the same
    sample for the same index and seed, in any order, with no images held in memory)."""

    def __init__(
        self,
        num_samples: int,
        num_images_per_sample: int,
        image_size: tuple[int, int],
        prompt: str,
        responses: Sequence[str] | None,
        response_words: int,
        seed: int,
    ):
        self.num_samples, self.num_images = num_samples, num_images_per_sample
        self.width, self.height = image_size
        self.prompt, self.responses = prompt, list(responses) if responses else None
        self.response_words, self.seed = response_words, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        from PIL import Image

        rng = np.random.default_rng([self.seed, index])
        shape = (self.height, self.width, 3)
        images = [
            Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode="RGB")
            for _ in range(self.num_images)
        ]
        if self.responses is not None:
            answer = self.responses[index % len(self.responses)]
        else:
            words = _FILLER.split()
            answer = " ".join(words[i] for i in rng.integers(0, len(words), self.response_words))
        user = [{"type": "image"}] * self.num_images + [{"type": "text", "text": self.prompt}]
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        return {"messages": messages, "images": images}


def synthetic_image_chat_dataset(
    num_samples: int = 10,
    *,
    num_images_per_sample: int = 1,
    image_size: Sequence[int] = (256, 256),
    prompt: str = "Describe this image.",
    responses: Sequence[str] | None = None,
    response_words: int = 256,
    seed: int = 0,
) -> SyntheticImageChats:
    """Conversations of `num_images_per_sample` random-noise RGB images (`image_size` is width,
    height) and `prompt`, answered with `responses` in turn or `response_words` filler words:
    items as `image_chat_dataset`'s, for timing training steps on images of a chosen size."""
    _require_pil()
    counts = {
        "num_samples": num_samples,
        "num_images_per_sample": num_images_per_sample,
        "response_words": response_words,
    }
    for name, value in counts.items():
        check_count("synthetic_image_chat_dataset", name, value)
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
        raise DataError(
            f"synthetic_image_chat_dataset: image_size must be [width, height], got {image_size!r}"
        )
    if responses is not None and not responses:
        raise DataError("synthetic_image_chat_dataset: responses is empty; give answers or null")
    return SyntheticImageChats(
        num_samples, num_images_per_sample, (size[0], size[1]), prompt, responses,
        response_words, seed,
    )  # fmt: skip
