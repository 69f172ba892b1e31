"""`genba model ...`: inspect presets and checkpoints.

``genba model info PRESET`` builds the model on the ``meta`` device (no memory
for weights; a 1T preset builds in well under a second) and prints exact total
and active-per-token parameter counts per component. Stems and heads depend on
the embodiments: by default a nominal set (an arm like Meta-World's Sawyer, a
motor drive, a joint-space arm), or the specs of a checkpoint (``--checkpoint``)
or of spec JSON files (``--spec``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genba.data.spec import EmbodimentSpec, SpecError
from genba.model.config import PRESETS, PresetError, get_preset
from genba.model.counts import build_meta, nominal_specs, parameter_counts


def _load_specs(args: argparse.Namespace) -> dict[str, EmbodimentSpec]:
    from genba.errors import CLIError

    try:
        if args.checkpoint:
            from genba.model.bundle import BundleError, bundle_specs, read_manifest
            try:
                return bundle_specs(read_manifest(args.checkpoint))
            except BundleError as e:
                raise CLIError(str(e)) from None
        if args.spec:
            specs = [EmbodimentSpec.from_json(Path(p).read_text(encoding="utf-8")) for p in args.spec]
            return {s.name: s for s in specs}
    except (OSError, SpecError, json.JSONDecodeError) as e:
        raise CLIError(f"--spec/--checkpoint: {e}") from None
    return nominal_specs()


def cmd_info(args: argparse.Namespace) -> int:
    from genba.errors import CLIError

    try:
        cfg = get_preset(args.preset)
    except PresetError as e:
        raise CLIError(str(e)) from None
    specs = _load_specs(args)
    counts = parameter_counts(build_meta(args.preset, specs))
    if args.json:
        print(json.dumps({"preset": args.preset, "embodiments": sorted(specs), "config": cfg.to_dict(),
                          "params": counts}, indent=1))
        return 0
    _print_table(args.preset, cfg, specs, counts)
    return 0


def _human(n: int) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3f}{unit}"
    return str(n)


def _print_table(preset: str, cfg, specs, counts) -> None:
    from rich.console import Console
    from rich.table import Table

    moe = f", MoE {cfg.n_experts} experts top-{cfg.top_k} + {cfg.n_shared_experts} shared on layers " \
          f"{cfg.first_dense_layers}..{cfg.n_layers - 1}" if cfg.n_experts else ""
    title = (f"preset {preset!r}: {cfg.n_layers} layers, width {cfg.d_model}, {cfg.n_heads} heads "
             f"({cfg.n_kv_heads} kv){moe}; head {cfg.head}, H={cfg.history}, C={cfg.chunk}, "
             f"{cfg.tokens_per_step} tokens/step; embodiments {', '.join(sorted(specs))}")
    table = Table(title=title, title_justify="left")
    for col in ("component", "total", "active / token", "total (exact)", "active (exact)"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for comp, row in counts.items():
        style = "bold" if comp == "total" else None
        table.add_row(comp, _human(row["total"]), _human(row["active"]), f"{row['total']:,}", f"{row['active']:,}",
                      style=style)
    console = Console()
    Console(width=max(console.width, 112)).print(table)  # never truncate the exact counts


def register(subparsers) -> None:
    """Add ``genba model`` and its verbs."""
    model = subparsers.add_parser("model", help="inspect model presets and checkpoints")
    verbs = model.add_subparsers(dest="model_verb", metavar="VERB")
    verbs.required = True
    info = verbs.add_parser("info", help="exact total and active parameter counts of a preset, per component "
                                         "(built on the meta device)")
    info.add_argument("preset", type=str, help=f"preset name: {', '.join(PRESETS)}")
    info.add_argument("--checkpoint", type=Path, default=None,
                      help="count stems/heads for this checkpoint's embodiments")
    info.add_argument("--spec", type=Path, action="append", default=[],
                      help="embodiment spec JSON file (repeatable); default: nominal arm, drive, joint-space arm")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)
