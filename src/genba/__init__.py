"""genba (現場): a sovereign Physical AI foundation-model stack.

Layers, top to bottom (imports point down only): cli > demo > serve > eval >
train > model > govern | envs > data > errors. docs/architecture.md shows the
modules of each and who may import whom; ``lint-imports`` checks it.
"""

__version__ = "0.1.0"
