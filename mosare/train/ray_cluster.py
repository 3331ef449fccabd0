"""Joining a Ray cluster, for the experiment grid (:mod:`mosare.train.ray_backend`) and the dashboard's jobs
(:mod:`mosare.app.ray_jobs`). Ray is optional: this module imports it and is itself imported only when Ray is used."""

from __future__ import annotations

import os
import socket

import ray

from mosare.errors import MosareError

PROBE_SECONDS = 5.0


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text or type(err).__name__)[:300]


def probe(address: str) -> None:
    """Fail fast on an unreachable ``host:port`` or ``ray://host:port`` (ray.init would retry for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise MosareError(f"Ray address {address!r}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as err:
        raise MosareError(f"cannot reach the Ray cluster at {address} ({err.strerror or one_line(err)}); "
                          "is `ray start --head` running there?") from None


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address`` (else ``$RAY_ADDRESS``, else start a local Ray with ``num_cpus``).

    Returns True when this call connected (the caller shuts Ray down when done) and False when this process was
    connected already. An unreachable or malformed address raises :class:`MosareError` within seconds."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address not in (None, "local", "auto"):
        probe(address)
    if ray.is_initialized():
        return False
    kwargs: dict = {"log_to_driver": False}
    if address in (None, "local"):
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    elif address.startswith("ray://"):
        kwargs = {}  # Ray Client: the cluster's own settings apply
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        hint = ""
        if address not in (None, "local") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token "
                    "(RAY_AUTH_TOKEN, or ~/.ray/auth_token)")
        raise MosareError(f"cannot connect to the Ray cluster at {address or 'a new local instance'}: "
                          f"{one_line(err)}{hint}") from None
    return True
