"""Training loops and DeepSpeed plumbing shared by pretrain and post-training."""
