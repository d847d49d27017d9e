"""Training: state, optimiser, pure steps, the loop and checkpoints."""
