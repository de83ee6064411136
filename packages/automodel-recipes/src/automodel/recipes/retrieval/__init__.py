"""The retrieval recipes (embedding models, rerankers, hard-negative mining) and their parts."""
