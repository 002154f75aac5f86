"""``focusnfix push RUN_DIR --repo-id NAME``: upload a run's ``lora/`` (weights, model card, sample grid)
to the Hugging Face Hub with huggingface_hub (``create_repo(exist_ok=True)`` + one ``upload_folder``
commit, so a failed upload leaves no half commit). The model card is written first when it is missing.

Bad input (not a run folder, no ``lora/``, NaN/Inf weights, a malformed repo id, no token, no write access) is a
:class:`FocusNFixError` (status 2); an offline machine or a network or server failure is a
:class:`RunFailed` (status 1). The token comes from ``--token-env VAR``, else huggingface_hub's own
lookup (``HF_TOKEN``, then ``huggingface-cli login``'s file); it is never written anywhere, and never printed
(:func:`~focusnfix.errors.redact`: a server may quote the request's ``Authorization`` header in its error).
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from ..config.names import check_repo_id
from ..errors import FocusNFixError, RunFailed, redact, register_secret, short, short_path

# what goes to the Hub from lora/: the diffusers and kohya weights, the card, the grid and the widget's image Î
UPLOAD = ("*.safetensors", "README.md", "samples.png", "lora-sample.png", "lora_config.json")


def token_from_env(var: str | None) -> str | None:
    """The token in environment variable ``var`` (None: huggingface_hub looks it up itself)."""
    if var is None:
        return None
    value = os.environ.get(var, "").strip()
    if not value:
        raise FocusNFixError(f"--token-env {short(var)}: that environment variable is not set or empty; export it, "
                             "or drop --token-env to use HF_TOKEN / `huggingface-cli login`")
    register_secret(value)
    return value


def check_can_push(token: str | None = None, what: str = "train.push_to_hub=true") -> None:
    """Bad input before any work: the Hub is switched off (``HF_HUB_OFFLINE``) or there is no token."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        later = ("" if what.startswith("focusnfix push")
                 else ", or set train.push_to_hub=false and run `focusnfix push` later")
        raise FocusNFixError(f"{what} needs the Hub but HF_HUB_OFFLINE is set; "
                             f"unset it on a machine with network{later}")
    if token is None and get_token() is None:
        raise FocusNFixError(f"{what} needs a Hugging Face token; export HF_TOKEN or run `huggingface-cli login` first")


def prepare(run_dir: str | Path, repo_id: str, base_model: str | None = None,
            check_lock: bool = True, write: bool = True) -> tuple[Path, list[str]]:
    """Check ``run_dir`` (its LoRA readable and finite) and ``repo_id``, write ``lora/README.md`` if missing (or
    point its snippet at ``repo_id``), and return ``(lora folder, file names to upload)``. ``check_lock``: refuse a
    run folder a trainer is writing (off for the trainer's own push). ``write=False`` (a dry run): change nothing;
    the names then include a missing model card."""
    from ..backbones.lora import check_lora_file
    from .folder import run_lock
    from .modelcard import CARD, point_card_at, write_model_card

    run = Path(run_dir)
    check_repo_id(repo_id)
    if base_model is not None:
        check_repo_id(base_model, "--base-model")
    if not run.is_dir():
        raise FocusNFixError(f"run folder {short_path(run)} does not exist or is not a folder; give a train.output_dir")
    if not (run / "config.yaml").is_file():
        raise FocusNFixError(f"{short_path(run)} is not a run folder (no config.yaml); "
                             "give the train.output_dir of a run")
    lora = run / "lora"
    if not lora.is_dir():
        raise FocusNFixError(f"{short_path(run)} has no lora/ folder (the run did not finish); finish it with "
                             f"`focusnfix train {run / 'config.yaml'} --resume`")
    check_lora_file(lora)  # one readable .safetensors file without NaN/Inf, or a one-line error naming the tensor
    if check_lock:
        run_lock(run).check()  # a trainer writing the run: status 2, naming its PID
    files = {p.name for p in lora.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, g) for g in UPLOAD)}
    if not write:
        return lora, sorted(files | {CARD})
    if not (lora / CARD).is_file():
        write_model_card(lora, run, load_id=repo_id, base_model=base_model)
    else:
        point_card_at(lora / CARD, repo_id)
    return lora, sorted(files | {CARD})


def push(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None, dry_run: bool = False,
         base_model: str | None = None, api=None, check_lock: bool = True) -> str:
    """Upload ``run_dir/lora`` to the Hub model repo ``repo_id`` (created if missing); return its URL.
    ``dry_run``: check, write and upload nothing, return the plan. ``api``: an ``HfApi``."""
    lora, files = prepare(run_dir, repo_id, base_model, check_lock, write=not dry_run)
    if dry_run:
        sizes = ", ".join(f"{name} ({(lora / name).stat().st_size:,} B)" if (lora / name).is_file()
                          else f"{name} (the model card, written when pushing)" for name in files)
        return f"would upload to {repo_id} ({'private' if private else 'public unless it exists'}): {sizes}"
    try:
        check_can_push(token, "focusnfix push")
    except FocusNFixError as e:
        if "HF_HUB_OFFLINE" in str(e):  # an offline machine is a runtime failure of push (status 1)
            raise RunFailed(f"{e}; nothing was uploaded") from None
        raise
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    if token is None:
        from huggingface_hub import get_token

        register_secret(get_token())  # HF_TOKEN or the login's file: never printed
    from .modelcard import read_json

    steps = read_json(Path(run_dir) / "summary.json").get("steps", "?")
    try:
        url = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        if private and not getattr(api.repo_info(repo_id, token=token, repo_type="model"), "private", True):
            raise FocusNFixError(f"--private: the Hub repo {repo_id} exists and is public; "
                                 "make it private on the Hub or "
                                 "drop --private")
        api.upload_folder(repo_id=repo_id, folder_path=str(lora), allow_patterns=files, token=token, repo_type="model",
                          commit_message=f"focusnfix: LoRA after {steps} steps")
    except FocusNFixError:
        raise
    except Exception as e:  # noqa: BLE001  (every Hub failure ends as one line with its status)
        raise hub_error(e, repo_id) from e
    return str(getattr(url, "url", url) or f"https://huggingface.co/{repo_id}")


def hub_error(e: Exception, repo_id: str) -> Exception:
    """A one-line error for a Hub call: refused token or access (status 2), anything else (status 1)."""
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    detail = redact(" ".join(str(e).split()))[:100] or type(e).__name__
    if status == 401:
        return FocusNFixError("the Hub refused the token (401); export a valid HF_TOKEN with write access or run "
                              "`huggingface-cli login`")
    if status == 403:
        return FocusNFixError(f"no write access to {repo_id} on the Hub (403); use a token with write access to that "
                              "owner, or another --repo-id")
    if status is not None:
        return RunFailed(f"the Hub answered {status} ({detail}); nothing was uploaded: retry later")
    return RunFailed(f"could not reach the Hub ({type(e).__name__}: {detail}); check the network (and HF_ENDPOINT), "
                     "then rerun focusnfix push; nothing was uploaded")


def push_after_training(run_dir: Path, repo_id: str, private: bool) -> str:
    """``train.push_to_hub``: push the finished run; a failure says the run itself is complete."""
    try:
        return push(run_dir, repo_id, private=private, check_lock=False)  # the trainer holds the lock
    except (FocusNFixError, RunFailed) as e:
        raise type(e)(f"the run in {short_path(run_dir, 50)} is complete but the push failed: {e}; retry with "
                      f"`focusnfix push {run_dir} --repo-id {repo_id}`") from e

