"""The checkpoint pool (train.checkpoint.dir), torch-free: run registries and the retention policy."""
