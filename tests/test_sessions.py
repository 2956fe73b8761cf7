"""Shared sessions: tokens, rotation, log-out-everywhere, secrets, CLI, middleware."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner
from itsdangerous import URLSafeSerializer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from shoal.cli.main import main
from shoal.config import NodeConfig
from shoal.errors import ConfigError, Conflict, InvalidSession, ShoalError
from shoal.http import (
    SCOPE_ERROR_KEY,
    SessionMiddleware,
    clear_session_cookie,
    current_session,
    session_cookie_header,
    set_session_cookie,
)
from shoal.runtime.state import ReplicatedState
from shoal.sessions import (
    NAMESPACE,
    Refusal,
    Session,
    SessionManager,
    check_secret,
    generate_secret,
    revocation_key,
    revoke_everywhere,
    revoke_session,
    revoked_in,
)
from shoal.store.memory import MemoryStore
from shoal.testing.clock import FakeClock
from shoal.testing.faulty import FaultyStore

OLD = generate_secret()
NEW = generate_secret()


# -- a tiny in-memory replicated state: every node's view shares the documents --


@dataclass(frozen=True)
class Doc:
    value: Any
    revision: int


class FakeCluster:
    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], Doc] = {}
        self.revision = 0

    def view(self) -> FakeState:
        return FakeState(self)


class FakeState:
    """One node's ``node.state``: ``get`` is local, ``await put`` replicates."""

    def __init__(self, cluster: FakeCluster) -> None:
        self._cluster = cluster

    def get(self, ns: str, key: str) -> Doc | None:
        return self._cluster.docs.get((ns, key))

    async def put(
        self, ns: str, key: str, value: Any, *, expect_revision: int | None = None
    ) -> int:
        old = self._cluster.docs.get((ns, key))
        current = old.revision if old is not None else 0
        if expect_revision is not None and expect_revision != current:
            raise Conflict(ns, key, expect_revision, current)
        self._cluster.revision += 1
        doc = Doc(copy.deepcopy(value), self._cluster.revision)
        self._cluster.docs[(ns, key)] = doc
        return doc.revision

    async def wait_for(self, revision: int) -> None:
        assert revision <= self._cluster.revision


def reason(exc: pytest.ExceptionInfo[InvalidSession]) -> str:
    return exc.value.reason


# -- tokens across nodes and rotation ---------------------------------------


def test_session_issued_on_a_verifies_on_b() -> None:
    node_a, node_b = SessionManager(NEW), SessionManager(NEW)
    token = node_a.issue("alice", {"role": "admin"})
    session = node_b.verify(token)
    assert session.subject == "alice"
    assert session.data == {"role": "admin"}
    assert session.expires_at - session.issued_at == pytest.approx(3600)
    assert len(session.session_id) >= 16
    assert node_b.verify(node_a.issue("alice")).session_id != session.session_id


def test_from_config_uses_auth_secret_and_previous_secrets() -> None:
    old_token = SessionManager(OLD).issue("bob")
    config = NodeConfig(auth={"secret": NEW, "previous_secrets": [OLD]})
    assert SessionManager.from_config(config).verify(old_token).subject == "bob"
    assert SessionManager.from_config(config.auth).verify(old_token).subject == "bob"
    with pytest.raises(ConfigError, match=r"auth\.secret is not set"):
        SessionManager.from_config(NodeConfig())


def test_rotation_keeps_sessions_then_drops_them_with_the_old_secret() -> None:
    before = SessionManager(OLD)
    token = before.issue("alice")
    # step 1 (introduce): every node accepts NEW before any node signs with it
    introduced = SessionManager(OLD, previous_secrets=[NEW])
    assert introduced.verify(SessionManager(NEW).issue("dave")).subject == "dave"
    assert introduced.verify(token).subject == "alice"
    # step 2 (switch): NEW signs, OLD still verifies
    rotated = SessionManager(NEW, previous_secrets=[OLD])
    assert rotated.verify(token).subject == "alice"
    assert before.verify(token).subject == "alice"  # a node not yet rolled
    new_token = rotated.issue("carol")
    assert SessionManager(NEW).verify(new_token).subject == "carol"
    # step 3 (retire): OLD dropped: its tokens are refused, NEW ones fine
    dropped = SessionManager(NEW)
    with pytest.raises(InvalidSession) as exc:
        dropped.verify(token)
    assert reason(exc) == "foreign_secret"
    assert dropped.verify(new_token).subject == "carol"


# -- refusals ----------------------------------------------------------------


def test_tampered_tokens_are_refused() -> None:
    manager = SessionManager(NEW)
    token = manager.issue("alice", {"role": "user"})
    kid, rest = token.split(".", 1)
    payload, sig = rest.rsplit(".", 1)
    middle = len(sig) // 2  # not the last character: its low bits are base64 padding
    bad_sig = sig[:middle] + ("A" if sig[middle] != "A" else "B") + sig[middle + 1 :]
    with pytest.raises(InvalidSession) as exc:
        manager.verify(f"{kid}.{payload}.{bad_sig}")
    assert reason(exc) == "tampered"
    # a forged payload (role: admin) under the original signature
    codec = URLSafeSerializer("any key: only the payload codec is used")
    data = codec.load_payload(payload.encode())
    data["data"]["role"] = "admin"
    forged = codec.dump_payload(data).decode()
    with pytest.raises(InvalidSession) as exc:
        manager.verify(f"{kid}.{forged}.{sig}")
    assert reason(exc) == "tampered"
    assert manager.verify(token).data == {"role": "user"}


async def test_expired_tokens_are_refused() -> None:
    clock = FakeClock()
    manager = SessionManager(NEW, ttl=60, clock=clock)
    token = manager.issue("alice")
    short = manager.issue("alice", ttl=5)
    await clock.advance(30)
    assert manager.verify(token).subject == "alice"
    with pytest.raises(InvalidSession) as exc:
        manager.verify(short)
    assert reason(exc) == "expired"
    await clock.advance(30)
    with pytest.raises(InvalidSession, match="expired") as exc:
        manager.verify(token)
    assert reason(exc) == Refusal.EXPIRED


def test_token_from_another_cluster_is_refused_as_foreign() -> None:
    with pytest.raises(InvalidSession) as exc:
        SessionManager(NEW).verify(SessionManager(OLD).issue("alice"))
    assert reason(exc) == "foreign_secret"


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b", "abcdefgh.", "abcdefgh.payload", "!!!!!!!!.abc.def", "x" * 9000, 42],
)
def test_malformed_tokens_are_refused(token: Any) -> None:
    with pytest.raises(InvalidSession) as exc:
        SessionManager(NEW).verify(token)
    assert reason(exc) == "malformed"
    assert isinstance(exc.value, ShoalError)


def test_signed_payload_that_is_not_a_session_is_malformed() -> None:
    manager = SessionManager(NEW)
    kid = manager.issue("x").split(".")[0]
    body = manager._current.dumps({"hello": "world"})  # signed, but not a session
    with pytest.raises(InvalidSession) as exc:
        manager.verify(f"{kid}.{body}")
    assert reason(exc) == "malformed"


def test_refusal_message_never_echoes_the_token() -> None:
    manager = SessionManager(NEW)
    token = manager.issue("alice")
    with pytest.raises(InvalidSession) as exc:
        manager.verify(token[:-2] + "zz")
    assert token[:-2] not in str(exc.value)


def test_issue_checks_its_arguments() -> None:
    manager = SessionManager(NEW)
    with pytest.raises(ValueError, match="subject"):
        manager.issue("")
    with pytest.raises(ValueError, match="ttl"):
        manager.issue("alice", ttl=0)
    with pytest.raises(TypeError, match="JSON"):
        manager.issue("alice", {"when": object()})
    with pytest.raises(ValueError, match="ttl"):
        SessionManager(NEW, ttl=-1)


# -- log out everywhere ------------------------------------------------------


async def test_log_out_everywhere_refuses_the_session_on_every_node() -> None:
    cluster = FakeCluster()
    clock = FakeClock()
    node_a = SessionManager(NEW, revoked=revoked_in(cluster.view()), clock=clock)
    node_b = SessionManager(NEW, revoked=revoked_in(cluster.view()), clock=clock)
    alice, bob = node_a.issue("alice"), node_a.issue("bob")
    assert node_b.verify(alice).subject == "alice"

    await clock.advance(1)
    cutoff = await revoke_everywhere(cluster.view(), "alice", clock=clock)
    assert cutoff == clock.time()
    doc = cluster.docs[(NAMESPACE, revocation_key(subject="alice"))]
    assert doc.value == {"before": cutoff}
    for node in (node_a, node_b):
        with pytest.raises(InvalidSession) as exc:
            node.verify(alice)
        assert reason(exc) == "revoked"
        assert node.verify(bob).subject == "bob"  # other subjects unaffected

    await clock.advance(1)
    assert node_b.verify(node_a.issue("alice")).subject == "alice"  # a new login works


async def test_log_out_everywhere_on_real_replicated_state() -> None:
    """The same, on one real ReplicatedState per node over one MemoryStore (each behind
    its own link): the revoking node refuses as soon as the call returns (its own copy
    has the write: found by this test, issue #15), the other once its copy has it, and a
    node cut off from the store keeps refusing from its copy."""
    clock = FakeClock()
    store = MemoryStore(clock)
    links = [FaultyStore(store, clock) for _ in range(2)]
    states = [ReplicatedState(link, clock) for link in links]
    for state in states:
        state.start()
    try:
        for state in states:
            await state.wait_ready()
        node_a, node_b = (SessionManager(NEW, revoked=revoked_in(s), clock=clock) for s in states)
        alice = node_a.issue("alice")
        await clock.advance(1)
        assert node_b.verify(alice).subject == "alice"
        cutoff = await revoke_everywhere(states[0], "alice", clock=clock)
        with pytest.raises(InvalidSession, match="revoked"):
            node_a.verify(alice)
        doc = states[0].get(NAMESPACE, revocation_key(subject="alice"))
        assert doc is not None and doc.value == {"before": cutoff}
        await states[1].wait_for(doc.revision)  # the watch delivers it to b
        with pytest.raises(InvalidSession, match="revoked"):
            node_b.verify(alice)
        links[1].cut()
        await clock.advance(1)
        with pytest.raises(InvalidSession, match="revoked"):
            node_b.verify(alice)  # from b's (stale) copy
        links[1].heal()
    finally:
        for state in states:
            await state.aclose()
        await store.aclose()


async def test_revoke_before_a_time_and_the_cutoff_never_moves_back() -> None:
    cluster = FakeCluster()
    clock = FakeClock()
    manager = SessionManager(NEW, revoked=revoked_in(cluster.view()), clock=clock)
    early = manager.issue("alice")
    await clock.advance(10)
    late = manager.issue("alice")
    state = cluster.view()
    await revoke_everywhere(state, "alice", before=clock.time() - 5)
    with pytest.raises(InvalidSession, match="revoked"):
        manager.verify(early)
    assert manager.verify(late).subject == "alice"
    assert await revoke_everywhere(state, "alice", before=0) == clock.time() - 5


async def test_concurrent_revocations_never_move_the_cutoff_back() -> None:
    """Several nodes log one user out at once, each with its own cut-off, on a
    real ReplicatedState over one MemoryStore: the greatest cut-off wins, and
    a slower writer with an older cut-off never overwrites it."""
    clock = FakeClock()
    store = MemoryStore(clock)
    states = [ReplicatedState(store, clock) for _ in range(4)]
    for state in states:
        state.start()
    try:
        for state in states:
            await state.wait_ready()
        key = revocation_key(subject="alice")
        for round_ in range(5):
            cutoffs = [1000.0 * round_ + c for c in (7.0, 3.0, 9.0, 5.0)]
            # every node starts from the same local view, so all but one CAS fails
            pairs = list(zip(states, cutoffs, strict=True))
            results = await asyncio.gather(
                *(revoke_everywhere(s, "alice", before=c) for s, c in pairs)
            )
            best = max(cutoffs)
            assert all(r >= c for r, c in zip(results, cutoffs, strict=True))
            assert max(results) == best
            kv = await store.get(f"state/{NAMESPACE}/{key}")
            assert kv is not None and json.loads(kv.value) == {"before": best}
            # an old cut-off arriving late changes nothing
            assert await revoke_everywhere(states[1], "alice", before=best - 1) == best
            kv2 = await store.get(f"state/{NAMESPACE}/{key}")
            assert kv2 is not None and kv2.mod_revision == kv.mod_revision
    finally:
        for state in states:
            await state.aclose()
        await store.aclose()


async def test_revoke_one_session_and_unreadable_documents_fail_closed() -> None:
    cluster = FakeCluster()
    state = cluster.view()
    manager = SessionManager(NEW, revoked=revoked_in(state))
    first, second = manager.issue("alice"), manager.issue("alice")
    await revoke_session(state, manager.verify(first))
    with pytest.raises(InvalidSession, match="revoked"):
        manager.verify(first)
    assert manager.verify(second).subject == "alice"
    await state.put(NAMESPACE, revocation_key(subject="alice"), {"before": "yesterday"})
    with pytest.raises(InvalidSession, match="revoked"):
        manager.verify(second)


# node.state's rule for keys (shoal.runtime.state)
STATE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,511}")


def test_revocation_keys() -> None:
    assert revocation_key(subject="alice@example.com") == "subject:alice@example.com"
    assert revocation_key(subject="a/b c") == "subject:a:2Fb:20c"
    assert revocation_key(subject="a:2F") != revocation_key(subject="a/")
    assert revocation_key(subject="é") == "subject::C3:A9"
    assert revocation_key(session_id="xyz") == "session:xyz"
    long = revocation_key(subject="x" * 1000)
    assert long.startswith("subject-sha256:") and long != revocation_key(subject="x" * 999)
    for subject in ["alice", "a/b c", "é", "%", ":", "x" * 1000, "ü" * 300]:
        assert STATE_KEY.fullmatch(revocation_key(subject=subject)), subject
    session_id = SessionManager(NEW).verify(SessionManager(NEW).issue("a")).session_id
    assert STATE_KEY.fullmatch(revocation_key(session_id=session_id))
    assert SessionManager.revocation_key(subject="a") == "subject:a"
    with pytest.raises(ValueError):
        revocation_key()
    with pytest.raises(ValueError):
        revocation_key(subject="a", session_id="b")


# -- secrets -----------------------------------------------------------------


def test_63_character_secret_is_refused_with_a_clear_message() -> None:
    secret = generate_secret()[:63]
    with pytest.raises(ConfigError) as exc:
        check_secret(secret)
    message = str(exc.value)
    assert "63 characters" in message and "shoal secret generate" in message
    assert secret not in message
    with pytest.raises(ConfigError, match="63 characters"):
        SessionManager(secret)
    with pytest.raises(ConfigError, match="previous secret #1"):
        SessionManager(NEW, previous_secrets=[secret])


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("a" * 64, "entropy"),
        ("ab" * 40, "entropy"),
        ("0123456789" * 7, "repeats"),
        ("password" * 8, "entropy"),
        (string.ascii_letters + string.digits + "-_", "sequences"),
    ],
)
def test_low_entropy_secrets_are_refused(secret: str, why: str) -> None:
    with pytest.raises(ConfigError, match="not random enough") as exc:
        check_secret(secret)
    message = str(exc.value)
    assert why in message and "shoal secret generate" in message
    assert secret not in message


def test_random_secrets_of_common_shapes_pass() -> None:
    for _ in range(50):
        check_secret(secrets.token_hex(32))
        check_secret(secrets.token_urlsafe(48))
        check_secret(generate_secret())


def test_cli_secret_generate_passes_check_and_differs_each_time() -> None:
    outputs = []
    for _ in range(3):
        result = CliRunner().invoke(main, ["secret", "generate"])
        assert result.exit_code == 0, result.output
        secret = result.output.strip()
        assert len(secret) >= 86
        check_secret(secret)
        outputs.append(secret)
    assert len(set(outputs)) == 3


# -- middleware --------------------------------------------------------------


def _app(manager: SessionManager) -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        session = current_session(request)
        return JSONResponse(
            {
                "subject": session.subject if session else None,
                "error": request.scope[SCOPE_ERROR_KEY],
            }
        )

    async def login(request: Request) -> Response:
        response = JSONResponse({"ok": True})
        set_session_cookie(response, manager.issue("alice"), max_age=manager.ttl, secure=False)
        return response

    async def logout(request: Request) -> Response:
        response = JSONResponse({"ok": True})
        clear_session_cookie(response)
        return response

    app = Starlette(
        routes=[
            Route("/me", whoami),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
        ]
    )
    app.add_middleware(SessionMiddleware, manager=manager)
    return app


def test_middleware_reads_bearer_header_and_cookie() -> None:
    manager = SessionManager(NEW)
    token = manager.issue("alice")
    with TestClient(_app(manager)) as client:
        assert client.get("/me").json() == {"subject": None, "error": None}
        got = client.get("/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert got == {"subject": "alice", "error": None}
        client.cookies.set("shoal_session", token)
        assert client.get("/me").json()["subject"] == "alice"


def test_middleware_sets_none_for_invalid_tokens() -> None:
    manager = SessionManager(NEW)
    foreign = SessionManager(OLD).issue("mallory")
    with TestClient(_app(manager)) as client:
        got = client.get("/me", headers={"Authorization": f"Bearer {foreign}"}).json()
        assert got == {"subject": None, "error": "foreign_secret"}
        got = client.get("/me", headers={"Authorization": "Bearer nonsense"}).json()
        assert got == {"subject": None, "error": "malformed"}
        got = client.get("/me", headers={"Authorization": "Basic dXNlcjpwdw=="}).json()
        assert got == {"subject": None, "error": None}  # not a bearer token: ignored
        client.cookies.set("shoal_session", manager.issue("alice")[:-3] + "abc")
        assert client.get("/me").json() == {"subject": None, "error": "tampered"}


def test_login_route_sets_cookie_that_the_middleware_accepts() -> None:
    manager = SessionManager(NEW)
    with TestClient(_app(manager)) as client:
        response = client.post("/login")
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Max-Age=3600" in cookie
        assert client.get("/me").json()["subject"] == "alice"
        client.post("/logout")
        assert client.get("/me").json()["subject"] is None


def test_raw_cookie_header_and_scope_helpers() -> None:
    name, value = session_cookie_header("tok.en", max_age=60)
    assert name == b"set-cookie"
    assert value == b"shoal_session=tok.en; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure"
    session = Session("alice", "sid", {}, 1.0, 2.0)
    assert current_session({"shoal.session": session}) is session
    assert current_session({}) is None
