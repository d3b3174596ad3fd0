"""Fail fast when the Hugging Face hub is out of reach.

A hub download retries for a minute or more on a dead network; one metadata
request fails at once, so the CLIs can print their one-line advice (use local
files) straight away. With HF_HUB_OFFLINE=1 nothing is requested and the hub
cache is used.
"""

from __future__ import annotations


def offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub (models) or datasets read it."""
    import datasets
    import huggingface_hub

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def probe(repo_id: str, repo_type: str) -> None:
    """One quick metadata request for a `model` or `dataset` repo; nothing when offline."""
    import huggingface_hub

    if offline():
        return
    api = huggingface_hub.HfApi()
    (api.model_info if repo_type == "model" else api.dataset_info)(repo_id, timeout=10)
