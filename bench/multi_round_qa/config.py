"""Configuration of a multi-round QA benchmark run."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class BenchConfig(BaseModel):
    """Workload and target of one run. Times and rates are in *simulated* seconds (see `time_scale`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_users: int = Field(gt=0, description="Active users in the steady state")
    num_rounds: int = Field(gt=0, description="Questions each user asks")
    qps: float = Field(gt=0, description="Overall request rate")
    shared_system_prompt: int = Field(ge=0, description="Tokens of the system prompt shared by all users")
    user_history_prompt: int = Field(ge=0, description="Tokens of the per-user history/context prompt")
    answer_len: int = Field(gt=0, description="max_tokens of each request")
    model: str
    base_urls: tuple[str, ...] = Field(min_length=1, description="OpenAI base URLs, used in turn")
    time: float | None = Field(default=None, gt=0, description="Stop launching requests after this long")
    sharegpt: Path | None = None
    init_user_id: int = 0
    request_with_user_id: bool = False
    log_interval: float = Field(default=30.0, gt=0)
    output: Path | None = None
    seed: int = 0
    time_scale: float = Field(default=1.0, gt=0, description="Simulated seconds per wall-clock second")
    api_key: str = Field(default="EMPTY", repr=False)
    request_timeout: float = Field(default=600.0, gt=0, description="Wall seconds per connect or chunk wait")
    show_progress: bool = True
    # Opens every prompt, so runs with different salts share no prefix (pods that cannot reset their caches).
    salt: str = ""
    # LoRA adapters the users send as `model`, user u the (u mod n)-th; empty: every user sends `model`.
    lora_adapters: tuple[str, ...] = ()

    @field_validator("base_urls")
    @classmethod
    def _check_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(u.strip().rstrip("/") for u in urls)
        for url in cleaned:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"base URL {url!r} must start with http:// or https://")
        return cleaned


def parse_base_urls(text: str) -> tuple[str, ...]:
    """Split a comma-separated `--base-url` value into its URLs."""
    urls = tuple(part.strip() for part in text.split(",") if part.strip())
    if not urls:
        raise ValueError("--base-url needs at least one URL")
    return urls
