"""Caption embeddings computed once by the text encoder, so training need not run it.

At paper scale T5-XXL costs more per step than it is worth to rerun on captions that never
change, so they are encoded once; the data pipeline then reads embeddings instead of running
the encoder (`data.train_text_embeddings`). The record format and its reader
(`EmbeddingRecords`) are muse_jax/data/shards.py; the command is `python -m
muse_jax.text.precompute`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from muse_jax.data import shards


CHUNK_BYTES = 256 << 20  # float32 states of the captions handed to the encoder in one call


def precompute(text_config, captions: list[str], out: Path, embedding_dtype: str = "float16",
               shard_size: int = 10000, overwrite: bool = False) -> Path:
    """Writes the shards, the empty-caption embedding and metadata.json; returns `out`."""
    from muse_jax.progress import bar
    from muse_jax.text import create_encoder

    out = Path(out)
    writer = shards.ShardWriter(out, shards.EMBEDDINGS, len(captions), shard_size)  # checks sizes
    encoder = create_encoder(text_config)  # fails on a bad config before anything is written
    shards.prepare_out(out, shards.EMBEDDINGS, "precomputed embeddings", overwrite,
                       (shards.EMPTY_CAPTION,))
    # The encoder sorts what it is given by length and cuts each batch to its longest caption:
    # given many batches at once, most batches are much shorter than max_length.
    row_bytes = encoder.max_length * encoder.dim * 4
    chunk = max(CHUNK_BYTES // row_bytes // encoder.batch_size, 1) * encoder.batch_size
    with bar(total=len(captions), unit="caption", desc="encoding captions") as progress:
        for start in range(0, len(captions), chunk):
            batch = captions[start:start + chunk]
            embeddings, masks = encoder.encode(batch)
            for caption, emb, mask in zip(batch, embeddings, masks):
                writer.write(shards.serialize_embedding(caption, emb, mask, embedding_dtype))
            progress.update(len(batch))
    empty, empty_mask = encoder.encode([""])
    np.savez(out / shards.EMPTY_CAPTION, embedding=empty[0], mask=empty_mask[0])
    writer.close({"encoder": text_config.to_dict(), "dim": encoder.dim,
                  "max_length": encoder.max_length, "embedding_dtype": embedding_dtype})
    return out
