"""The search: samplers, workers that ask the study for trials and train them, checkpoints, interrupts, placement."""
