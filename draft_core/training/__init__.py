"""Training: components resolved from a config (``components``), the loop (``runner``), checkpoints
(``checkpoint``), what happens when a step goes wrong (``faults``), signals (``signals``) and the learned
sampler hyperparameters (``learned_sampling``)."""
