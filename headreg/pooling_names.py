"""The pooling strategies by name, torch-free: ``headreg export --pooling`` is checked before torch loads."""

STRATEGIES = ("auto", "cls", "pooler", "mean", "max", "mean_sqrt_len", "last")
# sentence-transformers' name for a pooling -> headreg's
ALIASES = {"lasttoken": "last", "cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max",
           "mean_sqrt_len_tokens": "mean_sqrt_len"}
