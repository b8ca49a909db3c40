"""Records, shards and tokenization: everything before the batch."""
