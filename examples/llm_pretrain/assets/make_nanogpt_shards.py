"""Write the NanoGPT-shard example's data: the reversal corpus of assets/indexed/ as two llm.c
token shards (its documents, BOS-free, in order; the first 90% train, the rest validation).

    python examples/llm_pretrain/assets/make_nanogpt_shards.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from automodel.core.data import IndexedTokens, write_shard

HERE = Path(__file__).parent


def main(out: Path = HERE / "nanogpt") -> None:
    """Write reverse_train_000000.bin and reverse_val_000000.bin into `out`."""
    corpus = IndexedTokens(HERE / "indexed" / "reverse")
    tokens = np.concatenate([corpus[i] for i in range(len(corpus))])
    cut = int(len(tokens) * 0.9)
    out.mkdir(parents=True, exist_ok=True)
    write_shard(out / "reverse_train_000000.bin", tokens[:cut])
    write_shard(out / "reverse_val_000000.bin", tokens[cut:])


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:2]))
