"""Embed and refresh: bulk inference to versioned Parquet embeddings, and search over them."""
