"""The API key epp presents to pods (vLLM `--api-key`), and the one rule for which credentials reach a pod.

The key comes from `--pod-api-key-file PATH` or, without that flag, the `EPP_POD_API_KEY` environment
variable; it is read once at start-up and never logged or echoed (its repr is redacted).

With a pod key, every request epp sends or routes to a pod carries `Authorization: Bearer <key>`, and the
client's own `Authorization` and `x-api-key` never reach the pod. Without one, the client's headers pass
through unchanged (the pods then authenticate the clients themselves) and epp's own requests carry no key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "EPP_POD_API_KEY"
FLAG = "--pod-api-key-file"
AUTHORIZATION = "authorization"
# Client credentials replaced by the pod key (lower-case, as the front ends hold header names).
CLIENT_CREDENTIAL_HEADERS = frozenset({AUTHORIZATION, "x-api-key"})


class PodKeyError(ValueError):
    """The pod key could not be read or is unusable; the message names its source, never the key."""


class PodCredentials:
    """The pod API key and how it is presented; `repr()` and `str()` never show it."""

    __slots__ = ("_authorization",)

    def __init__(self, key: str) -> None:
        if not key or not _is_header_safe(key):
            raise PodKeyError("pod API key must be non-empty printable ASCII without whitespace")
        self._authorization = f"Bearer {key}"

    def __repr__(self) -> str:
        return "PodCredentials(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PodCredentials) and other._authorization == self._authorization

    def __hash__(self) -> int:
        return hash(self._authorization)

    def auth_headers(self) -> dict[str, str]:
        """The headers of a request epp itself sends to a pod (GET /v1/models)."""
        return {AUTHORIZATION: self._authorization}

    def headers_for_pod(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """`client_headers` (lower-case names) as forwarded to a pod: the client's credentials dropped and
        the pod key set."""
        headers = {k: v for k, v in client_headers.items() if k not in CLIENT_CREDENTIAL_HEADERS}
        headers[AUTHORIZATION] = self._authorization
        return headers

    def set_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers a proxy in front of the pods (Envoy, via ext_proc) overwrites on a routed request."""
        return ((AUTHORIZATION, self._authorization),)

    def removed_headers(self) -> tuple[str, ...]:
        """Client headers a proxy in front of the pods removes on a routed request."""
        return tuple(sorted(CLIENT_CREDENTIAL_HEADERS - {AUTHORIZATION}))


def headers_for_pod(credentials: PodCredentials | None, client_headers: Mapping[str, str]) -> dict[str, str]:
    """The one forwarding rule: with a pod key, the client's credentials are replaced by it; without, the
    client's headers pass through as they are."""
    if credentials is None:
        return dict(client_headers)
    return credentials.headers_for_pod(client_headers)


def load_pod_credentials(key_file: str | None, env: Mapping[str, str]) -> PodCredentials | None:
    """The pod key from `key_file` (the flag wins) or `env[EPP_POD_API_KEY]`, whitespace stripped; None when
    neither is given. PodKeyError (naming the file or variable, never the key) when unreadable or empty."""
    if key_file is not None:
        source = f"{FLAG} {key_file}"
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise PodKeyError(f"{source}: cannot read the pod API key: {reason}") from None
    elif ENV_VAR in env:
        source = f"environment variable {ENV_VAR}"
        key = env[ENV_VAR].strip()
    else:
        return None
    if not key:
        raise PodKeyError(f"{source}: the pod API key is empty")
    if not _is_header_safe(key):
        raise PodKeyError(
            f"{source}: the pod API key must be one line of printable ASCII without spaces "
            "(it is sent as `Authorization: Bearer <key>`)"
        )
    return PodCredentials(key)


def _is_header_safe(key: str) -> bool:
    return key.isascii() and key.isprintable() and not any(c.isspace() for c in key)
