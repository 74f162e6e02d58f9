"""Training: the packed-data loader, the loop on megatron-core, checkpoints, tracking and launchers."""
