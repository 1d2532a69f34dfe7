"""ditsim simulator: plans and predicts multi-GPU DiT inference. Imports no torch."""
