"""Build the tiny LLaVA processor and model config of the offline VLM example from its own data.

    python examples/vlm_finetune/assets/build_processor.py

Reads train.jsonl (see make_data.py) and writes

* tiny_processor/: a word-level tokenizer, a CLIP image processor (32x32, CLIP mean/std) and a
  chat template, which `transformers.AutoProcessor.from_pretrained` loads like any Hub
  processor; it expands each `<image>` into IMAGE_TOKENS copies, one per vision-tower patch;
* tiny_llava/config.json: a `LlavaConfig` (tiny CLIP vision tower + tiny llama) whose vocabulary
  size and token ids are the tokenizer's, so the two always match.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

HERE = Path(__file__).parent
SPECIAL_TOKENS = [
    "<pad>",
    "<unk>",
    "<s>",
    "</s>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<image>",
]
IMAGE_SIZE = 32
PATCH_SIZE = 8
# The CLIP tower outputs a CLS token plus one token per patch; the "default" strategy drops CLS.
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
# A message's content is a string or a list of {"type": "image"} / {"type": "text", "text": ...}
# parts (an image renders as `<image>`, which the processor expands). `{% generation %}` marks
# what the assistant says, so the loss covers only those tokens.
CHAT_TEMPLATE = (
    "{% macro render(content) %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for p in content %}"
    "{% if not loop.first %}{{ ' ' }}{% endif %}"
    "{% if p['type'] == 'image' %}{{ '<image>' }}{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endmacro %}"
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{{ '<|assistant|> ' }}{% generation %}{{ render(m['content']) + ' <|end|>' }}{% endgeneration %}{{ ' ' }}"
    "{% else %}"
    "{{ '<|' + m['role'] + '|> ' + render(m['content']) + ' <|end|> ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def texts(path: Path) -> list[str]:
    """Every text part of a chat jsonl file."""
    out = []
    for line in path.read_text().splitlines():
        for message in json.loads(line)["messages"]:
            out += [p["text"] for p in message["content"] if p["type"] == "text"]
    return out


def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level vocabulary trained on the training data (`?` is a word of its own)."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts(HERE / "train.jsonl"), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )


def model_config(tok: PreTrainedTokenizerFast) -> LlavaConfig:
    """A tiny CLIP vision tower and a tiny llama, with the tokenizer's vocabulary and ids."""
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        **ids,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def main() -> None:
    """Save the processor and the model config."""
    tok = tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH_SIZE,
        num_additional_image_tokens=1,  # CLIP's CLS token
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(HERE / "tiny_processor")
    model_config(tok).save_pretrained(HERE / "tiny_llava")
    print(f"wrote {HERE / 'tiny_processor'} ({len(tok)} tokens, {IMAGE_TOKENS} tokens per image)")
    print(f"wrote {HERE / 'tiny_llava'}")


if __name__ == "__main__":
    main()
