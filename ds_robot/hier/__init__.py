"""The hierarchical grasp controller: options, features, the training env and trainer, the
NumPy policy file (fp32 / int8) and the run-time controller."""
