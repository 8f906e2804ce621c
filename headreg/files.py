"""File names of a model saved by ``HeadedModel.save_pretrained``.

Torch-free, so the CLI and the runtime can recognise a saved model (and say it is not a bundle) before
importing torch.
"""

MODEL_CONFIG = "headreg_model.json"
HEAD_WEIGHTS = "head.safetensors"
BACKBONE_DIR = "backbone"
