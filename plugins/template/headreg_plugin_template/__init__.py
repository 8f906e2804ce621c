"""headreg-plugin-template: registers the ``template_head`` head.

Keep this module light: headreg imports it to list heads, so it must not import torch. The head class
and the postprocess are named as "module:attr" strings and imported only when they are used.
"""

from __future__ import annotations

from headreg import hookimpl


@hookimpl
def register_heads(register):
    register(
        name="template_head",
        cls="headreg_plugin_template.head:TemplateHead",
        postprocess="headreg_plugin_template.postprocess:template_head",
        postprocess_contract=2,
        result_fields={"label": "string", "score": "double", "cosine": "array<double>"},
        task="sequence-classification",
        level="sequence",
        description="Cosine-similarity classifier: scaled cosine between the pooled text and one vector per label.",
    )
