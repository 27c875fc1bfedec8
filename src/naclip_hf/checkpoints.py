"""Where a checkpoint comes from: a local folder, or a Hub id that is in the local cache or can be downloaded.

Every loader (the `naclip` commands, `naclip_hf.inference.load_model` and so the pipeline's default checkpoint
and the demo) goes through `resolve_checkpoint` before loading anything. It tells a folder from a Hub id with one
rule, checks a folder on disk, and for a Hub id that is not cached asks the Hub once, with a short timeout and no
retries. Without network this fails at once with what to do, instead of huggingface_hub retrying for half a minute
before transformers' own error. `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) is honoured: the Hub is never
contacted, and a checkpoint that is not cached is an immediate error.

Standard library (and `naclip_hf.models.naclip.options`) at import; huggingface_hub is imported for Hub ids only.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .models.naclip.options import DEFAULT_CHECKPOINT

# Seconds to wait for the Hub's answer to the one request that checks it can be reached (`HF_HUB_ETAG_TIMEOUT`
# overrides it, as it does huggingface_hub's own metadata requests).
HUB_PROBE_TIMEOUT = 4.0
CONFIG_FILE = "config.json"
# The tiny CLIP with random weights that the test suite ships, relative to a source checkout.
_TINY_CLIP = "tests/fixtures/golden/openai_clip_tiny.safetensors"

# A Hub id: "name" or "namespace/name"; each part ASCII letters, digits, '-', '_', '.', at most 96 characters, not
# starting or ending with '-' or '.' (huggingface_hub's rules). Text that is not on disk and not of this form is a
# path.
_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}")


class CheckpointUnavailableError(OSError):
    """A Hub checkpoint that is not in the local cache and cannot be downloaded (no network, Hub unreachable, or
    offline mode). The message says how to get the checkpoint and how to try naclip offline."""


@dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint, as named (`name`): a local folder (`path`), a Hub id (`repo_id`), or both for a Hub
    checkpoint read from its folder in the local cache because the Hub cannot be reached or offline mode is on
    (then nothing of it is asked from the Hub: the model, its processor and its tokenizer come from that folder)."""

    name: str
    path: Path | None = None
    repo_id: str | None = None

    @property
    def source(self) -> str:
        """What to give `from_pretrained`: the folder, else the Hub id."""
        return str(self.path) if self.path is not None else str(self.repo_id)

    def __str__(self) -> str:
        return self.name


def is_hub_id(text: str) -> bool:
    """Whether `text` has the form of a Hub id ("name" or "namespace/name"); it names a Hub checkpoint when no
    file or folder of that name exists."""
    return (
        _HUB_ID.fullmatch(text) is not None and "--" not in text and ".." not in text and not text.endswith(".git")
    )


def check_checkpoint(model_id_or_path: str | os.PathLike, option: str | None = None) -> Checkpoint:
    """The checkpoint named by `model_id_or_path`, checked without the network.

    A name that exists on disk, or that is not of the form of a Hub id, is a folder: it must exist, be a folder
    and hold `config.json`. Anything else is a Hub id (not checked here; see `resolve_checkpoint`).

    Args:
        model_id_or_path: a checkpoint folder or a Hub id.
        option: the command-line option that gave it (e.g. "--model"), named in the errors.

    Raises:
        OSError: a missing folder, a file, or a folder without `config.json`, with the fix.
    """
    text = os.fspath(model_id_or_path)
    path = Path(text).expanduser()
    if not os.path.lexists(path) and is_hub_id(text):
        return Checkpoint(text, repo_id=text)
    label = f"{option} {text}" if option else f"The checkpoint {text}"
    if not path.exists():
        raise OSError(f"{label}: no such folder; {_fix_text()}.")
    if not path.is_dir():
        raise OSError(
            f"{label} is a file, not a folder; for OpenAI CLIP weights run `naclip convert {shlex.quote(text)} "
            f"OUT_DIR` and use OUT_DIR ({_fix_text()})."
        )
    if not (path / CONFIG_FILE).is_file():
        raise OSError(f"{label}: folder has no {CONFIG_FILE}, so it is not a transformers checkpoint; {_fix_text()}.")
    return Checkpoint(text, path=path)


def resolve_checkpoint(
    model_id_or_path: str | os.PathLike | Checkpoint, option: str | None = None, revision: str | None = None
) -> Checkpoint:
    """The checkpoint named by `model_id_or_path`, checked so that loading it can succeed.

    A folder is checked as in `check_checkpoint`. A Hub id is looked up in the local cache, then (unless offline
    mode is on) the Hub is asked once, with a timeout of `HUB_PROBE_TIMEOUT` seconds and no retries, whether it
    can be reached and has the checkpoint. A cached checkpoint is read from the cache when the Hub cannot be
    reached.

    Args:
        model_id_or_path: a checkpoint folder or a Hub id; a `Checkpoint` (resolved already) is returned as is.
        option: the command-line option that gave it (e.g. "--model"), named in the errors.
        revision: the Hub revision (branch, tag or commit) to check.

    Raises:
        CheckpointUnavailableError: a Hub checkpoint that is not cached and cannot be downloaded.
        OSError: a bad folder, or a Hub id that the Hub does not have (or does not let you read).

    Example:

    ```python
    >>> checkpoint = resolve_checkpoint("openai/clip-vit-base-patch16")
    >>> model = NACLIPForSemanticSegmentation.from_pretrained(checkpoint.source)
    ```
    """
    if isinstance(model_id_or_path, Checkpoint):  # resolved already: a command resolves its checkpoint once
        return model_id_or_path
    checkpoint = check_checkpoint(model_id_or_path, option)
    if checkpoint.repo_id is None:
        return checkpoint
    from huggingface_hub import constants, try_to_load_from_cache

    repo_id = checkpoint.repo_id
    cached = isinstance(try_to_load_from_cache(repo_id, CONFIG_FILE, revision=revision), str)
    if constants.is_offline_mode():
        if cached:
            return _from_cache(checkpoint, revision)
        switch = "HF_HUB_OFFLINE" if _is_set("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
        why = (
            f"The checkpoint {repo_id} is not in the local cache ({constants.HF_HUB_CACHE}), and offline mode is on "
            f"({switch}=1), so it is not downloaded: unset {switch} on a machine with network to download it."
        )
        raise CheckpointUnavailableError(_unavailable_message(repo_id, option, why))
    problem = _ask_hub(repo_id, revision)
    if problem is None:
        return checkpoint
    kind, reason = problem
    if kind == "missing":
        label = f"{option} {repo_id}" if option else f"The checkpoint {repo_id}"
        raise OSError(f"{label} is not a folder here, and {reason}; {_fix_text()}.")
    if cached:
        return _from_cache(checkpoint, revision)
    why = (
        f"The checkpoint {repo_id} could not be downloaded: the Hugging Face Hub ({constants.ENDPOINT}) cannot be "
        f"reached ({reason}; no network, or the Hub is down), and it is not in the local cache "
        f"({constants.HF_HUB_CACHE})."
    )
    raise CheckpointUnavailableError(_unavailable_message(repo_id, option, why))


def _from_cache(checkpoint: Checkpoint, revision: str | None) -> Checkpoint:
    """The Hub checkpoint at its folder in the local cache (found without the network)."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(str(checkpoint.repo_id), revision=revision, local_files_only=True)
    return Checkpoint(checkpoint.name, path=Path(folder), repo_id=checkpoint.repo_id)


def _ask_hub(repo_id: str, revision: str | None) -> tuple[str, str] | None:
    """Ask the Hub once for the checkpoint's config: None when it answers with it, else ("missing", reason) when
    the Hub answers that it has no such checkpoint (or refuses it), or ("unreachable", reason).

    One HEAD request, on huggingface_hub's session (its proxies, certificates and
    offline switch) and with its error types, but without its retries and without the other requests its headers
    can bring (its agent registry)."""
    import huggingface_hub
    from huggingface_hub import constants, get_session, get_token, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import hf_raise_for_status

    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_PROBE_TIMEOUT)
    headers = {"user-agent": f"naclip-hf; hf_hub/{huggingface_hub.__version__}"}
    token = None if constants.HF_HUB_DISABLE_IMPLICIT_TOKEN else get_token()
    if token:
        headers["authorization"] = f"Bearer {token}"
    url = hf_hub_url(repo_id, CONFIG_FILE, revision=revision)
    try:
        response = get_session().head(url, headers=headers, timeout=timeout, follow_redirects=False)
        if not 300 <= response.status_code < 400:  # a redirect (a renamed repository, a CDN) is an answer
            hf_raise_for_status(response)
    except GatedRepoError:
        return "missing", f"the Hub model {repo_id} is gated: accept its terms on the Hub, then `hf auth login`"
    except RepositoryNotFoundError:
        return "missing", f"there is no model {repo_id} on the Hub (or it is private: log in with `hf auth login`)"
    except RevisionNotFoundError:
        return "missing", f"the Hub model {repo_id} has no revision {revision!r}"
    except RemoteEntryNotFoundError:
        return "missing", f"the Hub repository {repo_id} has no {CONFIG_FILE}, so it is not a transformers checkpoint"
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        return "unreachable", f"the Hub answered HTTP {status}" if status else _first_line(error)
    except Exception as error:  # noqa: BLE001 - DNS, refused connection, timeout, TLS, proxy: the Hub is out of reach
        return "unreachable", _first_line(error)
    return None


def _is_set(variable: str) -> bool:
    return os.environ.get(variable, "").upper() in ("1", "ON", "YES", "TRUE")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0][:200] if text else type(error).__name__) or type(error).__name__


def _fix_text() -> str:
    return (
        f"give a checkpoint folder (config.json + model.safetensors), a Hub id such as {DEFAULT_CHECKPOINT}, or "
        "convert OpenAI CLIP weights with `naclip convert WEIGHTS.pt OUT_DIR`"
    )


def _unavailable_message(repo_id: str, option: str | None, why: str) -> str:
    """`why` a Hub checkpoint is neither cached nor downloadable, then how to get it and how to try naclip
    offline now."""
    folder = repo_id.rsplit("/", 1)[-1]
    weights = "ViT-B-16.pt" if repo_id == DEFAULT_CHECKPOINT else "WEIGHTS.pt"  # OpenAI's name for the default's
    use = f"pass its folder with {option} DIR" if option else "load its folder instead of the Hub id"
    lines = [
        why,
        f"Get the checkpoint in one of these ways, then {use}:",
        f"  - on a machine with network: `hf download {repo_id} --local-dir {folder}`, then copy the folder here;",
        f"  - convert OpenAI CLIP weights: `naclip convert {weights} {folder}`;",
        "  - any local folder saved with save_pretrained (config.json + model.safetensors).",
        *offline_try_lines(option),
    ]
    return "\n".join(lines)


def offline_try_lines(option: str | None = None) -> list[str]:
    """How to try naclip without the Hub: convert the tiny CLIP of the test suite (shipped in a source checkout).
    Its weights are random, which the text says."""
    checkout = Path(__file__).resolve().parents[2] / _TINY_CLIP
    where = "" if checkout.is_file() else " (in a source checkout of naclip-hf)"
    weights = _display_path(checkout) if checkout.is_file() else _TINY_CLIP
    then = f"then add {option} tiny-clip to the command" if option else "then load the folder tiny-clip"
    return [
        f"To try naclip offline now, use the tiny CLIP of the test suite{where}. Its weights are RANDOM: the "
        "segmentation is meaningless, it only shows that the tool works.",
        f"  naclip convert {shlex.quote(weights)} tiny-clip   # {then}",
    ]


def _display_path(path: Path) -> str:
    """`path` relative to the working folder when it is inside it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


__all__ = [
    "Checkpoint",
    "CheckpointUnavailableError",
    "HUB_PROBE_TIMEOUT",
    "check_checkpoint",
    "is_hub_id",
    "offline_try_lines",
    "resolve_checkpoint",
]
