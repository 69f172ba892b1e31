"""genba (現場): a sovereign Physical AI foundation-model stack.

Layers, bottom to top: envs, data -> govern -> model -> train -> eval -> serve.
See docs/ and ../shared/design.md for who may import whom.
"""

__version__ = "0.1.0"
