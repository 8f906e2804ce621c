"""The token-head aggregation strategies by name, torch-free: the head's config (torch side), the runtime and the
Hugging Face protocol check the same list."""

AGGREGATIONS = ("none", "simple", "first", "average", "max")  # "simple" is transformers' name for "none" + grouping
