"""Building models: presets, tokenizers, heads, adapters."""
