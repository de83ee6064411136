"""Build the tokenizer and the tiny BERT config of the offline retrieval example from its own data.

    python examples/retrieval/assets/build_tokenizer.py

Reads the training split (corpus.jsonl and train_queries.jsonl, see make_data.py) and writes

* tokenizer/: a lowercasing BERT-style WordPiece tokenizer, which
  `transformers.AutoTokenizer.from_pretrained` loads like any Hub tokenizer: "[CLS] a [SEP]" for
  one text, "[CLS] a [SEP] b [SEP]" with token_type_ids 0/1 for a (query, passage) pair;
* tiny_bert/config.json: a tiny `BertConfig` whose vocabulary size and pad id are the
  tokenizer's, so the two always match (the recipes build it with random weights).

The vocabulary is every word of the training text, counted by `tokenizers`' WordLevelTrainer,
except that each town name counts as the two parts make_data.py joined ("zorvia" -> "zor",
"##via"): held-out towns are new combinations of the same parts, so they tokenize into pieces
the model was trained on rather than into tokens it never saw. "query", "passage" and ":" are
added for the prefixes embedding recipes put before texts, and single letters, digits and
punctuation are the fallback, so no ASCII text is [UNK].
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from make_data import ENDINGS, ONSETS
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import BertConfig, PreTrainedTokenizerFast

HERE = Path(__file__).parent
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] = 0
# The prefixes embedding recipes put before texts ("query: ...", "passage: ...").
EXTRA_WORDS = ["query", "passage", ":"]
MAX_LENGTH = 128


def texts() -> list[str]:
    """The documents and queries of the training split."""
    rows = [json.loads(line) for line in (HERE / "corpus.jsonl").read_text().splitlines()]
    queries = (HERE / "train_queries.jsonl").read_text().splitlines()
    return [row["text"] for row in rows] + [json.loads(line)["query"] for line in queries]


def pieces(word: str) -> list[str]:
    """A town name as its onset and "##" ending; any other word as itself."""
    for onset in ONSETS:
        if word.startswith(onset) and word[len(onset) :] in ENDINGS:
            return [onset, "##" + word[len(onset) :]]
    return [word]


def vocabulary(
    normalizer: normalizers.Normalizer, pre_tokenizer: pre_tokenizers.PreTokenizer
) -> dict[str, int]:
    """Special tokens, the training text's words and name parts, most frequent first (ties
    alphabetical, as the trainer orders them), then EXTRA_WORDS and the fallback characters
    (letters and digits, alone and after "##", and punctuation) not among them."""
    words = []
    for text in texts():
        split = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        words.append(" ".join(piece for word, _ in split for piece in pieces(word)))
    counter = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    counter.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False)
    counter.train_from_iterator(words, trainer=trainer)
    counted = counter.get_vocab()
    tokens = sorted(counted, key=counted.__getitem__)
    characters = string.ascii_lowercase + string.digits
    fallback = [*characters, *string.punctuation, *("##" + c for c in characters)]
    tokens += [t for t in dict.fromkeys(EXTRA_WORDS + fallback) if t not in counted]
    return {token: i for i, token in enumerate(tokens)}


def tokenizer() -> PreTrainedTokenizerFast:
    """A lowercasing WordPiece tokenizer that wraps texts in [CLS] ... [SEP]."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = Tokenizer(models.WordPiece(vocabulary(normalizer, pre_tokenizer), unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LENGTH,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def model_config(tok: PreTrainedTokenizerFast) -> BertConfig:
    """A 2-layer BERT with the tokenizer's vocabulary and pad id."""
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=2,
        pad_token_id=tok.pad_token_id,
    )
    config.architectures = ["BertModel"]
    return config


def main() -> None:
    """Save the tokenizer and the model config."""
    tok = tokenizer()
    tok.save_pretrained(HERE / "tokenizer")
    config = model_config(tok)
    config.save_pretrained(HERE / "tiny_bert")
    print(f"wrote {HERE / 'tokenizer'} ({len(tok)} tokens)")
    print(
        f"wrote {HERE / 'tiny_bert'} (hidden {config.hidden_size}, {config.num_hidden_layers} layers)"
    )


if __name__ == "__main__":
    main()
