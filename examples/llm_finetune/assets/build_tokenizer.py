"""Build the tiny word-level tokenizer of the offline examples from the repo's own data.

    python examples/llm_finetune/assets/build_tokenizer.py

Reads reverse_train.jsonl (see make_data.py) and writes tiny_tokenizer/, which
`transformers.AutoTokenizer.from_pretrained` loads like any Hub tokenizer, chat template
included.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
# `{% generation %}` marks what the assistant says, so the loss covers only those tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{{ '<|assistant|> ' }}{% generation %}{{ m['content'] + ' <|end|>' }}{% endgeneration %}{{ ' ' }}"
    "{% else %}"
    "{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def texts(path: Path) -> list[str]:
    """Every message content of a chat jsonl file."""
    out = []
    for line in path.read_text().splitlines():
        out += [m["content"] for m in json.loads(line)["messages"]]
    return out


def main() -> None:
    """Train a word-level vocabulary on the training data and save the tokenizer."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts(HERE / "reverse_train.jsonl"), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(HERE / "tiny_tokenizer")
    print(f"wrote {HERE / 'tiny_tokenizer'} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
