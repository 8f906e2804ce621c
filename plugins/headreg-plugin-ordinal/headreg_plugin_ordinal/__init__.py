"""headreg-plugin-ordinal: the ``ordinal`` head. Importing this module imports neither torch nor numpy."""

from __future__ import annotations

from headreg import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_heads(register):
    register(
        name="ordinal",
        aliases=("ordinal-regression", "coral"),
        task="ordinal-regression",
        cls="headreg_plugin_ordinal.head:OrdinalHead",
        postprocess="headreg_plugin_ordinal.postprocess:ordinal",
        postprocess_contract=2,
        result_fields={"label": "string", "rank": "int", "score": "double", "expected_rank": "double",
                       "exceed_probabilities": "array<double>", "probabilities": "map<string,double>"},
        description="Ordinal regression (ratings): K-1 rank-consistent cumulative logits, CORAL loss.",
    )
