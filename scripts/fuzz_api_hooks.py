"""Schemathesis hooks of scripts/fuzz_api.py (loaded through SCHEMATHESIS_HOOKS).

`map_case`: a room is created only by one of its participants (else 403), and the fuzzer draws
the caller and the participants independently, so nearly every generated POST /api/chat/rooms
would stop at that 403. For schema-valid bodies that do not name the caller, this hook puts
the caller (FUZZ_CALLER, or the generated X-User-Id) in place of the first participant: the
body stays schema-valid, and the creation, its answers and the rooms it leaves behind for the
other operations get fuzzed too.

`filter_failure`: the OpenAPI document states every constraint a request can break on its own. Two refusals
depend on what is stored, which no schema can state: a `before` cursor that is well formed but
names no message of the room, and a `roomId` that is already taken. Both are 400
`invalid_payload` (docs/ARCHITECTURE.md, "The OpenAPI document"), so the fuzzer's
`positive_data_acceptance` check (ST202: "schema-valid request rejected") would report them.
This hook drops exactly those failures: that check, that operation, status 400 and the
server's message for that refusal; every other failure stands.
"""

import os

import schemathesis

STATE_REFUSALS = {
    ("GET", "/api/chat/{roomId}/history"): "before names no message of this room",
    ("POST", "/api/chat/rooms"): "roomId already exists",
}


@schemathesis.hook
def filter_failure(context, failure, case, response):
    expected = STATE_REFUSALS.get((case.operation.method.upper(), case.operation.path))
    if failure.code != "ST202" or expected is None or response.status_code != 400:
        return True
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return True
    return message != expected


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if (
        case.operation.method.upper() != "POST"
        or case.operation.path != "/api/chat/rooms"
        or case.meta is None
        or not case.meta.generation.mode.is_positive
        or not isinstance(body, dict)
        or not isinstance(body.get("participants"), list)
        or not body["participants"]
    ):
        return case
    caller = os.environ.get("FUZZ_CALLER") or (case.headers or {}).get("X-User-Id")
    if isinstance(caller, str) and caller not in body["participants"]:
        case.body = {**body, "participants": [caller, *body["participants"][1:]]}
    return case
