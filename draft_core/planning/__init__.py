"""``draft plan``: predict a training step's peak device memory and FLOPs without weights, and fit a budget."""
