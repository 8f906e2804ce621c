"""headreg-plugin-crf: the ``crf`` head. Importing this module imports neither torch nor numpy."""

from __future__ import annotations

from headreg import hookimpl

__version__ = "0.1.0"
ENTITY = "struct<label:string,score:double,start:int,end:int,word:string,sequence:int>"


@hookimpl
def register_heads(register):
    register(
        name="crf",
        aliases=("token-crf",),
        task="token-classification",
        level="token",
        cls="headreg_plugin_crf.head:CRFHead",
        postprocess="headreg_plugin_crf.postprocess:crf",
        postprocess_contract=2,
        result_fields={"entities": f"array<{ENTITY}>", "path": "array<int>"},
        description="Linear-chain CRF token classification: emissions + transitions, NLL loss, Viterbi decoding.",
    )
