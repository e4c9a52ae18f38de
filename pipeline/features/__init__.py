"""The features job: built shards -> preprocessing -> frozen encoders -> Parquet features."""
