"""How one network is trained: the torch-free TrainConfig (config.py) and the engine (engine.py: the step, CUDA graphs, checkpoints)."""
