"""The build job: chunks of input rows into validated, deduplicated WebDataset shards."""
