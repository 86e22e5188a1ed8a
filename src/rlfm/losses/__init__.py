"""Pure loss functions: tensors in, tensors out."""
