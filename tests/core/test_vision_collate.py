"""VisionChatCollator on the processors of three VLM families, and a fourth it fails on, each
assembled offline in the test (word-level tokenizers, tiny image sizes, random tiny models).

* LLaVA: the repo's tiny processor (`<image>` expanded into a plain run of image tokens);
* Qwen2-VL: `<|vision_start|><|image_pad|><|vision_end|>`, the pad expanded into one token per
  2x2 patch group, so the count depends on the image's size;
* Idefics3 (SmolVLM): `<image>` expanded into `<fake_token_around_image><global-img>` + image
  tokens + `<fake_token_around_image>`, separators the greedy alignment must skip;
* Gemma 3 (expected to fail): `<start_of_image>` expanded into `\\n\\n<start_of_image>` + image
  tokens + `<end_of_image>\\n\\n`, whose newlines merge with the template's own newline before
  the image into a different token, so the template's tokens are not found in the processor's.

Each family's chat template ends an assistant turn differently (` <|end|> `, `<|im_end|>\\n`,
`<end_of_utterance>\\n` after a leading space, `<end_of_turn>\\n`), and the labels must be
exactly that text. The Qwen2-VL, Idefics3 and Gemma 3 tokenizers are word-level over byte-level
words (`Ġred`), so decoding is lossless and the labels can be compared with the template's text
character for character.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("PIL")

from PIL import Image, ImageDraw

from automodel.core.data import DataError, VisionChatCollator
from automodel.core.losses import IGNORE_INDEX, MaskedCrossEntropy, shift_labels

ASSETS = Path(__file__).resolve().parents[2] / "examples" / "vlm_finetune" / "assets"


# --- conversations ---------------------------------------------------------------------------


def _image(width: int, height: int, colour: str) -> Image.Image:
    """A white RGB image with a coloured square in the middle."""
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).rectangle(
        (width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=colour
    )
    return image


def _user(text: str, image: bool = False) -> dict[str, Any]:
    parts = [{"type": "image"}] if image else []
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


# Three conversations of different lengths: one turn; a text follow-up (two answers); a second
# image in the follow-up (two answers, two images). Words from the tiny LLaVA vocabulary.
CONVERSATIONS = [
    {
        "messages": [_user("what colour is the square?", image=True), _assistant("red")],
        "images": [(56, 56, "red")],
        "answers": ["red"],
    },
    {
        "messages": [
            _user("how many circles?", image=True),
            _assistant("two"),
            _user("which shape is yellow?"),
            _assistant("one circle"),
        ],
        "images": [(56, 56, "yellow")],
        "answers": ["two", "one circle"],
    },
    {
        "messages": [
            _user("how many shapes?", image=True),
            _assistant("three"),
            _user("which shape is green?", image=True),
            _assistant("triangle"),
        ],
        "images": [(112, 56, "blue"), (56, 84, "green")],
        "answers": ["three", "triangle"],
    },
]


def _samples() -> list[dict[str, Any]]:
    """`ImageChatDataset` items: messages with {"type": "image"} parts and PIL RGB images."""
    return [
        {
            "messages": copy.deepcopy(c["messages"]),
            "images": [_image(*size) for size in c["images"]],
        }
        for c in CONVERSATIONS
    ]


def _texts() -> list[str]:
    """Every text part, alone and after a space (byte-level words differ: `red` vs `Ġred`)."""
    out = []
    for conversation in CONVERSATIONS:
        for message in conversation["messages"]:
            for part in message["content"]:
                if part["type"] == "text":
                    out += [part["text"], " " + part["text"]]
    return out


def _word_level_tokenizer(special_tokens: list[str], fragments: list[str], **kwargs: Any):
    """A word-level fast tokenizer over byte-level words (lossless decoding) trained on the
    conversations and the template's fragments; `special_tokens` are never split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.WordLevelTrainer(
        special_tokens=["<unk>", *special_tokens], show_progress=False
    )
    tok.train_from_iterator(_texts() + fragments, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=special_tokens, **kwargs
    )


# --- families --------------------------------------------------------------------------------


@dataclass
class Family:
    name: str
    processor: Any
    config: Any  # the model config, vocabulary and image token ids the tokenizer's
    end_of_turn: str  # what the template renders after an answer, up to the next turn
    image_token: str  # the token the processor repeats once per image feature
    # each image's expansion: these tokens, the run of image tokens, then `after`
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    run_lengths: list[list[int]] = field(default_factory=list)  # per conversation, per image
    lead: str = ""  # what the labels hold before the answer (the generation prompt's remainder)
    lossless: bool = True  # whether decoding gives back the text's whitespace

    def label_text(self, answer: str) -> str:
        """The characters of one assistant turn, exactly as the template renders them."""
        return self.lead + answer + self.end_of_turn

    @property
    def image_tokens(self) -> list[str]:
        """Every token the processor makes of an image."""
        return [*self.before, self.image_token, *self.after]

    def image_feature_tokens(self, single: Any, n_images: int) -> int:
        """The number of image tokens the processor's own numbers call for (one sample)."""
        if self.name == "qwen2_vl":
            merge = self.processor.image_processor.merge_size
            return int(single["image_grid_thw"].prod(-1).sum()) // merge**2
        if self.name == "llava":
            return self.config.image_seq_length * n_images
        if self.name == "gemma3":
            return self.processor.image_seq_length * n_images
        return self.processor.image_seq_len * n_images


def _llava() -> Family:
    from transformers import AutoConfig

    from automodel.core.models import load_processor

    processor = load_processor(ASSETS / "tiny_processor")
    config = AutoConfig.from_pretrained(ASSETS / "tiny_llava")
    # `<|assistant|> ` + answer + ` <|end|>` + ` `; whitespace splits words and is no token.
    # 32x32 CLIP input, 8-pixel patches, CLS dropped: 16 tokens per image, whatever its size.
    return Family(
        "llava",
        processor,
        config,
        end_of_turn=" <|end|> ",
        image_token="<image>",
        run_lengths=[[16], [16], [16, 16]],
        lossless=False,
    )


# Qwen2-VL's chat template as Qwen writes it: a default system turn, `<|im_start|>role\n`,
# an image part as <|vision_start|><|image_pad|><|vision_end|>, `<|im_end|>\n` after each turn.
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _qwen2_vl() -> Family:
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2VLProcessor without its video processor: without torchvision (not installed
        here) `Qwen2VLProcessor(...)` fails checking the video processor's class
        (`VIDEO_PROCESSOR_MAPPING has no attribute '_extra_content'`). The image path
        (`__call__`, `replace_image_token`) is Qwen2VLProcessor's own."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tokenizer = _word_level_tokenizer(
        QWEN2_SPECIAL,
        ["system\nYou are a helpful assistant.", "user\n", "assistant\n", "\n"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    # 14-pixel patches merged 2x2, sides rounded to 28: 56x56 is a 4x4 grid (4 tokens),
    # 112x56 an 4x8 grid (8 tokens), 56x84 a 6x4 grid (6 tokens)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 56)
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN2_VL_TEMPLATE
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_SPECIAL}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            # head_dim 16: 8 rotary frequencies split over (time, height, width)
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 64,  # the merger's output: the text model's hidden size
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return Family(
        "qwen2_vl",
        processor,
        config,
        end_of_turn="<|im_end|>\n",
        image_token="<|image_pad|>",
        before=["<|vision_start|>"],
        after=["<|vision_end|>"],
        run_lengths=[[4], [4], [8, 6]],
    )


# SmolVLM's chat template (Idefics3 processor): `User:<image>question<end_of_utterance>\n`, the
# role followed by ':' when the turn opens with an image and ': ' otherwise; the generation
# prompt is `Assistant:`, so an answer's labels start with the space the turn renders.
IDEFICS3_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is not string and message['content'][0]['type'] == 'image' %}"
    "{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_SPECIAL = [
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
]
IDEFICS3_IMAGE_SIZE, IDEFICS3_PATCH, IDEFICS3_SCALE = 64, 16, 2
# (64 / 16)^2 patches, pixel-shuffled by 2 in each direction
IDEFICS3_IMAGE_SEQ_LEN = (IDEFICS3_IMAGE_SIZE // IDEFICS3_PATCH) ** 2 // IDEFICS3_SCALE**2


def _idefics3() -> Family:
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    tokenizer = _word_level_tokenizer(
        IDEFICS3_SPECIAL,
        ["User:", "Assistant:", "\n"],
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
    )
    edge = {"longest_edge": IDEFICS3_IMAGE_SIZE}
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size=edge, max_image_size=edge
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IDEFICS3_IMAGE_SEQ_LEN,
        chat_template=IDEFICS3_TEMPLATE,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IDEFICS3_SPECIAL}
    config = Idefics3Config(
        image_token_id=ids["<image>"],
        scale_factor=IDEFICS3_SCALE,
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IDEFICS3_IMAGE_SIZE,
            "patch_size": IDEFICS3_PATCH,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<end_of_utterance>"],
            "pad_token_id": ids["<|im_end|>"],
        },
    )
    n = IDEFICS3_IMAGE_SEQ_LEN
    return Family(
        "idefics3",
        processor,
        config,
        lead=" ",
        end_of_turn="<end_of_utterance>\n",
        image_token="<image>",
        before=["<fake_token_around_image>", "<global-img>"],
        after=["<fake_token_around_image>"],
        run_lengths=[[n], [n], [n, n]],
    )


# Gemma 3's chat template: `<start_of_turn>user\n<start_of_image>question<end_of_turn>\n`, the
# assistant's role written `model`, text parts trimmed.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
GEMMA3_SPECIAL = [
    "<pad>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
GEMMA3_IMAGE_TOKENS = 4  # 32x32 images, 8-pixel patches (4x4), pooled 2x2


def _gemma3() -> Family:
    from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor

    tokenizer = _word_level_tokenizer(
        GEMMA3_SPECIAL,
        ["user\n", "model\n", "\n", "\n\n", "\n\n\n"],
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=GEMMA3_TEMPLATE,
        image_seq_length=GEMMA3_IMAGE_TOKENS,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA3_SPECIAL}
    config = Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "sliding_window": 64,
            "bos_token_id": ids["<bos>"],
            "eos_token_id": ids["<eos>"],
            "pad_token_id": ids["<pad>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    n = GEMMA3_IMAGE_TOKENS
    return Family(
        "gemma3",
        processor,
        config,
        end_of_turn="<end_of_turn>\n",
        image_token="<image_soft_token>",
        before=["<start_of_image>"],
        after=["<end_of_image>"],
        run_lengths=[[n], [n], [n, n]],
    )


BUILDERS = {"llava": _llava, "qwen2_vl": _qwen2_vl, "idefics3": _idefics3, "gemma3": _gemma3}
END_OF_TURN = {  # the first conversation's answer as each template renders it
    "llava": "red <|end|> ",
    "qwen2_vl": "red<|im_end|>\n",
    "idefics3": " red<end_of_utterance>\n",
    "gemma3": "red<end_of_turn>\n",
}


@dataclass
class Collated:
    family: Family
    collator: VisionChatCollator
    samples: list[dict[str, Any]]
    batch: dict[str, torch.Tensor]


@pytest.fixture(
    scope="module",
    params=[
        "llava",
        "qwen2_vl",
        "idefics3",
        "gemma3",
    ],
)
def collated(request: pytest.FixtureRequest) -> Collated:
    """One family's processor and config, and the batch of the three conversations."""
    family = BUILDERS[request.param]()
    collator = VisionChatCollator(family.processor)
    samples = _samples()
    return Collated(family, collator, samples, collator(samples))


def _ids(family: Family, tokens: list[str]) -> list[int]:
    return [family.processor.tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _runs(values: list[int], inside: Any) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive positions whose value is `inside`."""
    runs: list[tuple[int, int]] = []
    for i, value in enumerate(values):
        if inside(value):
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
    return runs


# --- tests -----------------------------------------------------------------------------------


def test_batch_holds_the_processor_tensors(collated: Collated) -> None:
    batch = collated.batch
    assert {"input_ids", "attention_mask", "pixel_values", "labels"} <= set(batch)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert batch["labels"].dtype == torch.long
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert len(set(lengths)) == 3, "conversations of different lengths: two rows padded"
    for row, length in enumerate(lengths):  # right padding: the row's tokens, then pads
        assert batch["attention_mask"][row, :length].all()
        assert not batch["attention_mask"][row, length:].any()
    unk = collated.family.processor.tokenizer.unk_token_id
    assert unk not in batch["input_ids"][batch["attention_mask"].bool()].tolist()


def test_labels_are_the_answers_and_end_of_turn(collated: Collated) -> None:
    """Where labels are not -100 they are the input ids, and each run of them is one assistant
    turn: the answer and the template's end-of-turn text, exactly."""
    family, batch = collated.family, collated.batch
    tokenizer = family.processor.tokenizer
    for row, conversation in enumerate(CONVERSATIONS):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        labeled = labels != IGNORE_INDEX
        assert torch.equal(labels[labeled], ids[labeled])
        runs = [labels[a:b].tolist() for a, b in _runs(labels.tolist(), IGNORE_INDEX.__ne__)]
        expected = [family.label_text(answer) for answer in conversation["answers"]]
        # the word-level LLaVA tokenizer has no whitespace tokens: it decodes words spaced
        assert [tokenizer.decode(run) for run in runs] == [
            text if family.lossless else " ".join(text.split()) for text in expected
        ]
        assert runs == [tokenizer(text, add_special_tokens=False).input_ids for text in expected]


def test_end_of_turn_text_per_template(collated: Collated) -> None:
    """The precise turn ending each template renders (what the labels above must hold)."""
    family = collated.family
    assert family.label_text("red") == END_OF_TURN[family.name]
    text = collated.collator.render(collated.samples[0]["messages"], False)
    prompt = collated.collator.render(collated.samples[0]["messages"][:1], True)
    assert text == prompt + END_OF_TURN[family.name]


def test_image_and_pad_positions_are_ignored(collated: Collated) -> None:
    family, batch = collated.family, collated.batch
    labels, ids = batch["labels"], batch["input_ids"]
    is_image = torch.isin(ids, torch.tensor(_ids(family, family.image_tokens)))
    is_image &= batch["attention_mask"].bool()
    assert is_image.any()
    assert (labels[is_image] == IGNORE_INDEX).all()
    assert (batch["attention_mask"] == 0).any()
    assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_image_tokens_as_the_processor_makes_them(collated: Collated) -> None:
    """Each row is the processor's own output for that sample alone, image tokens included,
    as many as the processor's numbers (grid, sequence length) call for."""
    family, batch, collator = collated.family, collated.batch, collated.collator
    (image_token_id,) = _ids(family, [family.image_token])
    for row, sample in enumerate(collated.samples):
        single = family.processor(
            text=[collator.render(sample["messages"], False)],
            images=[sample["images"]],
            add_special_tokens=False,
            return_tensors="pt",
        )
        length = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :length].tolist() == single["input_ids"][0].tolist()
        count = int((batch["input_ids"][row] == image_token_id).sum())
        assert count == int((single["input_ids"][0] == image_token_id).sum())
        assert count == family.image_feature_tokens(single, len(sample["images"]))


def test_each_image_expansion(collated: Collated) -> None:
    """Each image became its family's sequence: separators, then a run of image tokens as long
    as that image calls for (Qwen2-VL: its size), then separators."""
    family, batch = collated.family, collated.batch
    (image,) = _ids(family, [family.image_token])
    before, after = _ids(family, family.before), _ids(family, family.after)
    for row, lengths in enumerate(family.run_lengths):
        ids = batch["input_ids"][row].tolist()
        runs = _runs(ids, image.__eq__)
        assert [b - a for a, b in runs] == lengths
        for a, b in runs:
            assert ids[a - len(before) : a] == before
            assert ids[b : b + len(after)] == after
    if family.name == "qwen2_vl":
        assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4], [1, 4, 8], [1, 6, 4]]


def test_tiny_model_forward_and_loss(collated: Collated) -> None:
    from transformers import AutoModelForImageTextToText

    family, batch = collated.family, collated.batch
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(family.config).eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
    vocab = len(family.processor.tokenizer)
    assert logits.shape == (*batch["input_ids"].shape, vocab)
    assert torch.isfinite(logits).all()
    loss = MaskedCrossEntropy()(logits, shift_labels(batch["labels"]))
    assert torch.isfinite(loss) and loss > 0
    # the model's own causal-LM loss on the unshifted labels is the same number
    reference = model.loss_function(logits=logits, labels=batch["labels"], vocab_size=vocab)
    torch.testing.assert_close(loss, reference.float(), rtol=1e-5, atol=1e-5)


def test_gemma3_newlines_merge_around_the_image() -> None:
    """Why Gemma 3 needs more than greedy matching: the template's tokens around the image
    are not all in the processor's (a byte-level tokenizer writes a run of newlines as one
    word, as Gemma's vocabulary has tokens for newline runs)."""
    family = _gemma3()
    tokenizer = family.processor.tokenizer
    sample = _samples()[0]
    text = VisionChatCollator(family.processor).render(sample["messages"], False)
    assert text.startswith("<bos><start_of_turn>user\n<start_of_image>what")
    plain = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False).input_ids)
    expanded = tokenizer.convert_ids_to_tokens(
        family.processor(text=[text], images=[sample["images"]], add_special_tokens=False)[
            "input_ids"
        ][0]
    )
    assert plain[:5] == ["<bos>", "<start_of_turn>", "user", "Ċ", "<start_of_image>"]
    assert expanded[:5] == ["<bos>", "<start_of_turn>", "user", "ĊĊĊ", "<start_of_image>"]


# A template that renders earlier assistant turns differently from the last one, as reasoning
# templates drop the thinking of earlier answers (here: all but the answer's last word).
ELIDING_TEMPLATE = (
    "{% macro render(content) %}"
    "{% for p in content %}{% if not loop.first %}{{ ' ' }}{% endif %}"
    "{% if p['type'] == 'image' %}{{ '<image>' }}{% else %}{{ p['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endmacro %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{% set text = render(m['content']) %}"
    "{{ '<|assistant|> ' + (text if loop.last else text.split(' ')[-1]) + ' <|end|> ' }}"
    "{% else %}{{ '<|' + m['role'] + '|> ' + render(m['content']) + ' <|end|> ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def test_template_that_rewrites_earlier_turns_is_refused() -> None:
    from automodel.core.models import load_processor

    processor = load_processor(ASSETS / "tiny_processor")
    collator = VisionChatCollator(processor, chat_template=ELIDING_TEMPLATE)
    sample = _samples()[1]
    sample["messages"][1] = _assistant("one two")  # rendered "two" once a turn follows it
    text = collator.render(sample["messages"], False)
    assert "<|assistant|> two <|end|>" in text and "one two" not in text
    with pytest.raises(DataError, match="differently depending on the messages after it"):
        collator([sample])
    collator([_samples()[0]])  # one assistant turn: nothing after it, accepted


def test_labels_follow_retokenized_text_but_never_drop_an_answer_token() -> None:
    """Inserted image tokens get -100; a prompt token the expansion merged away is fine; an
    answer token it changed is an error, not a lost label."""
    from automodel.core.data._vision_collate import _follow

    ids, labels = [1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4]
    expanded = [1, 7, 7, 8, 3, 4]  # image tokens 7, and the prompt's 2 merged into 8
    assert _follow(ids, labels, expanded, 0) == [IGNORE_INDEX] * 4 + [3, 4]
    with pytest.raises(DataError, match="tokenized 1 answer token"):
        _follow(ids, labels, [1, 7, 7, 2, 9, 4], 0)  # the answer's 3 became 9


def test_a_processor_needing_a_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    """A Qwen2-VL processor folder (with its video processor) where torchvision is missing:
    a UserError naming the library, not a traceback from transformers."""
    import importlib.util
    import json

    from automodel.core.config import UserError
    from automodel.core.models import load_processor

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the processor loads")
    _qwen2_vl().processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    config["processor_class"] = "Qwen2VLProcessor"  # as a real Qwen2-VL folder says
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    video = {"video_processor_type": "Qwen2VLVideoProcessor"}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video))
    with pytest.raises(UserError, match="requires the Torchvision library") as info:
        load_processor(tmp_path)
    assert "the build that matches your torch" in str(info.value)


def test_an_assistant_prefix_goes_before_every_answer_with_no_loss() -> None:
    """`assistant_prefix` (Gemma 4's empty thinking channel, say) is written at the start of
    every assistant turn; the labels are the same answers as without it, the prefix has none."""
    family = BUILDERS["qwen2_vl"]()
    plain = VisionChatCollator(family.processor)(_samples())
    prefixed = VisionChatCollator(family.processor, assistant_prefix="<|endoftext|>")(_samples())
    prefix_id = _ids(family, ["<|endoftext|>"])[0]  # also the pad token: counted in the rows
    for row, conversation in enumerate(CONVERSATIONS):
        ids, labels = prefixed["input_ids"][row], prefixed["labels"][row]
        runs = _runs(labels.tolist(), IGNORE_INDEX.__ne__)
        assert len(runs) == len(conversation["answers"])
        assert [int(ids[start - 1]) for start, _ in runs] == [prefix_id] * len(runs)
        length = int(prefixed["attention_mask"][row].sum())
        assert int((ids[:length] == prefix_id).sum()) == len(runs)
        assert length == int(plain["attention_mask"][row].sum()) + len(runs)
        before = plain["labels"][row]
        assert labels[labels != IGNORE_INDEX].tolist() == before[before != IGNORE_INDEX].tolist()
