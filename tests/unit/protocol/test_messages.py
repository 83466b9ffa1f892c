"""Control messages: every type survives JSON, and malformed ones name op and field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from innerloop.protocol.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Denied,
    Error,
    Event,
    FileData,
    FileMeta,
    FileRead,
    Hello,
    Message,
    MessageError,
    ProcessRestart,
    ProcessRestarted,
    ProcessStatus,
    ProcessStatusRequest,
    Run,
    RunDone,
    SyncApply,
    SyncDone,
    Tree,
    TreeRequest,
    Welcome,
    decode_message,
    encode_message,
)

EXAMPLES: list[Message] = [
    Hello(tokens=["s3cret", "older"], rotate="0" * 64),
    Welcome(agent_version="0.1.0", pid=1, started_at=1_700_000_000.5, command=["python", "app.py"]),
    Denied(reason="wrong token"),
    Error(reason="no such root"),
    TreeRequest(root="/app"),
    FileRead(root="/app", path="a/b.py"),
    FileData(root="/app", path="a/b.py", mode=0o644, sha256="0" * 64, data="aGk="),
    Tree(root="/app", files={"main.py": "ab" * 32}),
    SyncApply(
        root="/app",
        files=[FileMeta(path="a/b.py", mode=0o755, size=3, sha256="cd" * 32)],
        deletes=["old.py"],
        stream=5,
    ),
    SyncDone(applied=1, deleted=1, ms=2.5, started=True),
    ProcessRestart(),
    ProcessRestarted(pid=42, ms=120.0),
    ProcessStatusRequest(),
    ProcessStatus(state="exited", pid=None, exit_code=-15, restarts=3),
    Run(argv=["pip", "install", "-r", "requirements.txt"], cwd="/app", env={"PIP_NO_INPUT": "1"}, timeout=60.0),
    RunDone(exit_code=0, output="ok\n", ms=1500.0),
    Event(kind="process-exited", pid=42, exit_code=1, message="exited with code 1"),
]


def test_every_message_type_has_an_example() -> None:
    assert {type(message) for message in EXAMPLES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda message: message.OP)
def test_round_trip_through_json(message: Message) -> None:
    wire = json.loads(json.dumps(encode_message(message, 7)))
    assert wire["op"] == message.OP
    assert wire["id"] == 7
    assert decode_message(wire) == (7, message)


def test_events_carry_a_null_id() -> None:
    wire = encode_message(Event(kind="process-started", pid=9), None)
    assert wire["id"] is None
    assert decode_message(wire) == (None, Event(kind="process-started", pid=9))


def test_hello_defaults_to_this_protocol_version_and_hides_the_token() -> None:
    hello = Hello(tokens=["s3cret"])
    assert hello.version == PROTOCOL_VERSION == 3
    assert "s3cret" not in repr(hello)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tokens": []}, "1 to 4 tokens, got 0"),
        ({"tokens": ["a"] * 5}, "1 to 4 tokens, got 5"),
        ({"tokens": ["a"], "rotate": "ABC"}, "rotate must be a sha256"),
        ({"token": "a"}, "missing field 'tokens'"),
    ],
)
def test_a_hello_with_no_token_too_many_or_a_bad_rotation_is_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(MessageError, match=message):
        decode_message({"op": "hello", "id": 1, "version": PROTOCOL_VERSION, **fields})


def test_a_hello_of_another_version_decodes_to_just_its_version() -> None:
    """An older CLI's hello (one ``token``) must get "protocol version" as its answer, not a field error."""
    assert decode_message({"op": "hello", "id": 1, "version": 2, "token": "x"}) == (1, Hello(version=2, tokens=[]))


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert decode_message({"op": "tree.request", "id": 1, "root": "/app", "since": 12}) == (
        1,
        TreeRequest(root="/app"),
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"id": 1}, "without a string 'op'"),
        ({"op": "explode", "id": 1}, "unknown op 'explode'"),
        ({"op": "tree.request", "id": "1", "root": "/app"}, "'id' must be an integer"),
        ({"op": "tree.request", "id": 1}, "tree.request: missing field 'root'"),
        ({"op": "tree.request", "id": 1, "root": 5}, "field 'root' must be a string, got int"),
        ({"op": "hello", "id": 1, "version": True, "token": "x"}, "'version' must be an integer"),
        ({"op": "run", "id": 1, "argv": []}, "argv must not be empty"),
        ({"op": "run", "id": 1, "argv": ["ls", 3]}, "'argv' must be a list of strings"),
        ({"op": "process", "id": 1, "state": "zombie", "restarts": 0}, "state 'zombie' is not one of"),
        (
            {"op": "sync.apply", "id": 1, "root": "/a", "deletes": [], "stream": 1, "files": [{"path": "x"}]},
            "sync.apply file: missing field 'mode'",
        ),
        (
            {
                "op": "sync.apply",
                "id": 1,
                "root": "/a",
                "deletes": [],
                "stream": 1,
                "files": [{"path": "x", "mode": 0o644, "size": -1, "sha256": ""}],
            },
            "negative size",
        ),
        (
            {
                "op": "sync.apply",
                "id": 1,
                "root": "/a",
                "deletes": [],
                "stream": 1,
                "files": [{"path": "x", "mode": 0o100644, "size": 1, "sha256": ""}],
            },
            "is not a permission mode",
        ),
        ({"op": "tree", "id": 1, "root": "/a", "files": {"a": 1}}, "'files' must be an object of strings"),
    ],
)
def test_malformed_messages_name_op_and_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(MessageError, match=message):
        decode_message(raw)
