"""``headreg serve``: the torch-free HTTP server (needs ``pip install 'headreg[serve]'``).

``headreg.serve.schema`` (request parsing, :class:`~headreg.serve.schema.RequestError`) imports no web
framework, so other front doors (the Ray Serve deployment) share it; ``headreg.serve.app`` is the Starlette
app and ``headreg.serve.batcher`` the cross-request queue.
"""
