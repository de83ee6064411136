"""Data: loading, tokenization with label masking, packing, collation and stateful dataloaders.

```python
from automodel.core.data import build_dataloader, chat_dataset, pack_dataset

dataset = chat_dataset(tokenizer, "train.jsonl", seq_length=512)
dataset = pack_dataset(dataset, packed_sequence_size=1024)
loader = build_dataloader(dataset, batch_size=8, seed=0, dp_rank=rank, dp_size=world)
```

Instead of packing, `build_dataloader(..., padding_free=True)` puts each batch's samples end to
end in one row (no padding, the same batches and losses as padded ones).

Labels are not shifted (the loss shifts them) and are -100 where no loss is taken.
For vision-language models, `image_chat_dataset` reads image-text conversations (images decoded
when read) and `VisionChatCollator(processor)` batches them with the processor;
`synthetic_image_chat_dataset` makes random-noise ones, for timing steps without data
(`synthetic_text_dataset`: random token rows, for text models).
For retrieval, `retrieval_dataset` reads queries with a positive and hard-negative passages
(inline or by id in a corpus; one source, NeMo AutoModel's layouts or a list of sources),
`retrieval_eval_set` held-out queries over their own corpus, and
`BiEncoderCollator` / `CrossEncoderCollator` tokenize them for an embedding model or a reranker.
For pre-training, `text_dataset(..., seq_length=N, truncation="chunk")` splits long documents
into consecutive N-token samples instead of cutting them off, and `indexed_dataset` reads
Megatron indexed datasets (`.bin` + `.idx`, memory-mapped; `write_indexed` writes them) as
N-token windows, one dataset or a weighted blend; `streaming_text_dataset` tokenizes a
`datasets` stream on the fly into the same windows, with its position in the checkpoint;
`nanogpt_dataset` reads NanoGPT / llm.c token shards (`.bin`, memory-mapped; `write_shard`
writes one).
For function calling, `tool_call_dataset` reads agent traces (OpenAI messages with tool calls,
ShareGPT or chatml tool turns) and xLAM rows, rendered with their tool definitions.
"""

from ..losses import IGNORE_INDEX
from ._building import TEXT_TRUNCATION_MODES, TRUNCATION_MODES
from ._chat import assistant_char_spans, chat_labels, chat_labels_many
from ._collate import collate
from ._dataset import TokenizedDataset
from ._errors import DataError
from ._formats import (
    chat_dataset,
    hellaswag_dataset,
    instruction_dataset,
    squad_dataset,
    text_dataset,
)
from ._indexed import IndexedTokens, token_dtype, write_indexed
from ._loader import DataChangedError, build_dataloader
from ._loading import load_rows, require_columns
from ._nanogpt import nanogpt_dataset, read_shard, write_shard
from ._packing import (
    PackedDataset,
    block_causal_mask,
    concat_documents,
    document_ids,
    pack_dataset,
)
from ._preprocess import PreprocessSummary, preprocess_text
from ._retrieval import (
    BiEncoderCollator,
    CrossEncoderCollator,
    RetrievalDataset,
    RetrievalEvalSet,
    TextCollator,
    load_corpus,
    retrieval_dataset,
    retrieval_eval_set,
    split_towers,
)
from ._sampler import ShardedSampler
from ._stream import TextStream, streaming_text_dataset
from ._text_synthetic import SyntheticTextRows, synthetic_text_dataset
from ._token_windows import BlendedWindows, TokenWindows, indexed_dataset
from ._tool_calls import tool_call_dataset, tool_conversation
from ._vision import ImageChatDataset, image_chat_dataset, image_qa_dataset
from ._vision_collate import VisionChatCollator
from ._vision_synthetic import SyntheticImageChats, synthetic_image_chat_dataset

__all__ = [
    "IGNORE_INDEX",
    "TEXT_TRUNCATION_MODES",
    "TRUNCATION_MODES",
    "BiEncoderCollator",
    "BlendedWindows",
    "CrossEncoderCollator",
    "DataChangedError",
    "DataError",
    "ImageChatDataset",
    "IndexedTokens",
    "PackedDataset",
    "PreprocessSummary",
    "RetrievalDataset",
    "RetrievalEvalSet",
    "ShardedSampler",
    "SyntheticImageChats",
    "SyntheticTextRows",
    "TextCollator",
    "TextStream",
    "TokenWindows",
    "TokenizedDataset",
    "VisionChatCollator",
    "assistant_char_spans",
    "block_causal_mask",
    "build_dataloader",
    "chat_dataset",
    "chat_labels",
    "chat_labels_many",
    "collate",
    "concat_documents",
    "document_ids",
    "hellaswag_dataset",
    "image_chat_dataset",
    "image_qa_dataset",
    "indexed_dataset",
    "instruction_dataset",
    "load_corpus",
    "load_rows",
    "nanogpt_dataset",
    "pack_dataset",
    "preprocess_text",
    "read_shard",
    "require_columns",
    "retrieval_dataset",
    "retrieval_eval_set",
    "split_towers",
    "squad_dataset",
    "streaming_text_dataset",
    "synthetic_image_chat_dataset",
    "synthetic_text_dataset",
    "text_dataset",
    "token_dtype",
    "tool_call_dataset",
    "tool_conversation",
    "write_indexed",
    "write_shard",
]
