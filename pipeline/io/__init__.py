"""I/O helpers: fsspec paths, atomic writes, deterministic tars and Parquet sinks."""
