"""``focusnfix push RUN_DIR --repo-id NAME``: upload a run's ``lora/`` to the Hugging Face Hub
(:mod:`focusnfix.runs.hub`)."""
from __future__ import annotations

import argparse

from ..runs.hub import push, token_from_env


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``push RUN_DIR --repo-id NAME [--private] [--token-env VAR] [--dry-run] [--base-model ID]``."""
    p = subparsers.add_parser("push", help="upload a run's LoRA and model card to the Hugging Face Hub", description=(
        "Upload RUN_DIR/lora (the .safetensors weights, README.md model card, samples.png, lora_config.json) to a Hub "
        "model repo, created if missing, as one commit. Writes the model card first if lora/ has none. The token comes "
        "from --token-env VAR, else HF_TOKEN, else `huggingface-cli login`."))
    p.add_argument("run_dir", help="a finished run folder (train.output_dir)")
    p.add_argument("--repo-id", required=True, help="Hub model repo, e.g. you/sd14-fnf")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing public repo is "
                   "refused)")
    p.add_argument("--token-env", metavar="VAR", help="read the token from this environment variable")
    p.add_argument("--dry-run", action="store_true", help="check and list the files; write and upload nothing")
    p.add_argument("--base-model", metavar="ID", help="Hub id of the base model for the card's metadata when "
                   "model.path was a local folder")
    p.set_defaults(func=cmd_push)
    return p


def cmd_push(args: argparse.Namespace) -> int:
    token = token_from_env(args.token_env)
    print(push(args.run_dir, args.repo_id, private=args.private, token=token, dry_run=args.dry_run,
               base_model=args.base_model))
    return 0
