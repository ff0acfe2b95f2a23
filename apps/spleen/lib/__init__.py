"""The spleen app's code: one config module per model, their infer/train tasks, transforms and networks."""
