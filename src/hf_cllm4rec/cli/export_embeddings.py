"""`cllm4rec export-embeddings`: a checkpoint's user and item embeddings with the data set's raw ids."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import check_output_folder, load_checkpoint, non_empty


def add_export_embeddings_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-embeddings",
        help="Write the user and item embeddings with their raw ids (safetensors and a datasets table).",
        description="Write a checkpoint's collaborative and content user and item embeddings, with the data set's "
        "raw ids, and the item head, as embeddings.safetensors and as a DatasetDict (tables/) for an "
        "approximate-nearest-neighbour index: a user's scores are the inner products of the hidden state of their "
        "prompt with the item head's rows (the item collaborative embeddings, unless the head is untied).",
    )
    parser.add_argument("--model", required=True, type=non_empty, help="Folder or Hub name of a CLLM4Rec checkpoint.")
    parser.add_argument(
        "--out", required=True, type=non_empty, help="Folder to write to: new or empty, unless --overwrite."
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an export already at --out (a folder that holds anything else is never replaced).",
    )
    parser.set_defaults(handler=export_embeddings)


def export_embeddings(args: argparse.Namespace) -> int:
    """Runs `cllm4rec export-embeddings`."""
    from ..serving import IdMappings, embeddings

    out = Path(args.out)
    check_output_folder(out, embeddings.check_exportable, args.overwrite)  # before the checkpoint is loaded
    model, _ = load_checkpoint(args.model)
    embeddings.export_embeddings(model, out, IdMappings.load(args.model), overwrite=args.overwrite)
    config = model.config
    print(f"Wrote {config.num_users} user and {config.num_items} item embeddings ({config.hidden_size} dims) to {out}")
    return 0
