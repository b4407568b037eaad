"""How one network is trained: the torch-free TrainConfig (config.py) and the engine (engine.py: train() and
its epoch loop; trial.py: the step; schedule.py: the learning rate; graphs.py: CUDA graphs; gpulock.py: taking
turns on a GPU)."""
