"""Scoring generated code so that the program cannot judge itself.

A program that runs in the same process as its tests can fool them: return an object whose
``__eq__`` is always true, patch ``builtins.abs``, read the expected values out of its own test
file, or steal the harness's pass nonce from a frame. So a code answer is scored in three
sandboxed runs, and the untrusted one never sees an expected value nor decides the verdict:

1. **record** (trusted, once per problem): the reference solution runs the problem's tests; every
   top-level call of the entry point is recorded as its arguments, encoded as plain data.
2. **answer** (untrusted): the candidate's code, then a driver that calls its entry point with
   each recorded argument list and writes what came back (or which exception it raised),
   encoded as plain data, to the sandbox's data pipe. No test and no expected value is in
   this process.
3. **replay** (trusted): the problem's own tests run again, against a stand-in for the entry
   point that checks each call's arguments against the recording and returns the candidate's
   decoded answer. Only plain values cross over (None, bool, int, float, complex, str, bytes,
   list, tuple, dict, set, frozenset); anything else arrives as an opaque value equal to
   nothing, so an object that claims to equal everything fails. The tests' own comparisons
   and tolerances decide, in a process the candidate never ran in.

Limits, stated: a test whose arguments depend on an earlier answer (``f(f(x))``) passes only if
that answer is the reference's; a test that checks how the function changed its arguments in
place sees them unchanged. A problem whose reference fails its own tests, or whose tests pass the
entry point something that is not plain data, is scored the old way (one process), and
:func:`record_calls` says why.
"""

from __future__ import annotations

import json

# Runs inside sandboxed programs (and is exec'd by the tests): plain data <-> JSON-able values.
# Ints beyond 64 bits and floats travel as hex text, so nothing is rounded.
CODEC = r'''
def __dm_enc(v, depth=0):
    if depth > 100:
        return {"x": "nested too deeply"}
    if v is None or v is True or v is False:
        return v
    t = type(v)
    if isinstance(v, int):
        v = int.__int__(v)
        return v if -2**63 <= v < 2**63 else {"I": format(v, "x")}
    if isinstance(v, float):
        return {"f": float.hex(float.__float__(v))}
    if isinstance(v, complex):
        v = complex.__complex__(v)
        return {"c": [float.hex(v.real), float.hex(v.imag)]}
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, (bytes, bytearray)):
        return {"b": bytes(v).hex()}
    if isinstance(v, list):
        return [__dm_enc(x, depth + 1) for x in list.__iter__(v)]
    if isinstance(v, tuple):
        return {"t": [__dm_enc(x, depth + 1) for x in tuple.__iter__(v)]}
    if isinstance(v, dict):
        return {"d": [[__dm_enc(k, depth + 1), __dm_enc(x, depth + 1)] for k, x in dict.items(v)]}
    if isinstance(v, frozenset):
        return {"F": [__dm_enc(x, depth + 1) for x in frozenset.__iter__(v)]}
    if isinstance(v, set):
        return {"s": [__dm_enc(x, depth + 1) for x in set.__iter__(v)]}
    if getattr(t, "__module__", "") == "numpy" and getattr(v, "ndim", None) == 0:
        return __dm_enc(v.item(), depth + 1)  # a numpy scalar: its Python value
    return {"x": getattr(t, "__name__", "?")}


class __DmOpaque:
    """A value that could not be carried over: equal to nothing, not even itself."""

    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    __hash__ = object.__hash__

    def __repr__(self):
        return "<a " + self.name + " the sandbox could not carry over>"


def __dm_dec(v):
    if isinstance(v, list):
        return [__dm_dec(x) for x in v]
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    if tag == "I":
        return int(x, 16)
    if tag == "f":
        return float.fromhex(x)
    if tag == "c":
        return complex(float.fromhex(x[0]), float.fromhex(x[1]))
    if tag == "b":
        return bytes.fromhex(x)
    if tag == "t":
        return tuple(__dm_dec(y) for y in x)
    if tag == "d":
        return {__dm_dec(k): __dm_dec(y) for k, y in x}
    if tag == "F":
        return frozenset(__dm_dec(y) for y in x)
    if tag == "s":
        return set(__dm_dec(y) for y in x)
    return __DmOpaque(x)


def __dm_write(text):
    import os
    data = text.encode("utf-8")
    while data:
        data = data[os.write(__data_fd__, data):]
'''


def _opaque(encoded) -> bool:
    """Whether an encoded value holds something that is not plain data."""
    if isinstance(encoded, list):
        return any(_opaque(x) for x in encoded)
    if isinstance(encoded, dict):
        ((tag, x),) = encoded.items()
        return tag == "x" or (isinstance(x, list) and _opaque(x))
    return False


def record_program(reference: str, entry: str, tests: str) -> str:
    """Stage 1: the reference and its tests, recording the entry point's top-level calls."""
    return f"""{reference}

{CODEC}

def __dm_install():
    original = globals()[{entry!r}]
    calls, depth = [], [0]

    def recorder(*args, **kwargs):
        if depth[0]:  # the reference calling itself: not a call of the tests
            return original(*args, **kwargs)
        calls.append(__dm_enc([list(args), kwargs]))  # before the call, which may change them
        depth[0] += 1
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1

    globals()[{entry!r}] = recorder
    return calls


__dm_calls = __dm_install()

{tests}

import json as __dm_json
__dm_write(__dm_json.dumps(__dm_calls))
"""


def answer_program(candidate: str, entry: str, calls: list) -> str:
    """Stage 2: the candidate's code, then its entry point called with each recorded argument list."""
    return f"""{candidate}

{CODEC}

def __dm_answer():
    import json
    function = globals()[{entry!r}]
    answers = []
    for args, kwargs in __dm_dec(json.loads({json.dumps(calls)!r})):
        try:
            answers.append(["ok", __dm_enc(function(*args, **kwargs))])
        except Exception as exc:
            answers.append(["raise", type(exc).__name__, str(exc)[:200]])
    __dm_write(json.dumps(answers))


__dm_answer()
"""


def replay_program(context: str, entry: str, tests: str, calls: list, answers: list) -> str:
    """Stage 3: the tests against a stand-in that returns the candidate's recorded answers."""
    return f"""{context}

{CODEC}

def __dm_stand_in():
    import builtins, json
    calls = json.loads({json.dumps(calls)!r})
    answers = json.loads({json.dumps(answers)!r})
    done = [0]

    def {entry}(*args, **kwargs):
        n = done[0]
        done[0] += 1
        if n >= len(calls):
            raise AssertionError("the tests called {entry} more often than the reference's run did")
        if __dm_enc([list(args), kwargs]) != calls[n]:
            raise AssertionError(
                "call " + str(n + 1) + " of {entry} got other arguments than in the reference's run "
                "(they depend on an earlier answer that differs from the reference's)"
            )
        answer = answers[n]
        if answer[0] == "raise":
            kind = getattr(builtins, answer[1], None)
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                kind = RuntimeError
            raise kind(answer[1] + " raised by the solution: " + answer[2])
        return __dm_dec(answer[1])

    return {entry}


globals()[{entry!r}] = __dm_stand_in()

{tests}
"""


def decode_data(text: str | None, what: str) -> list:
    """The JSON list a stage wrote to its data pipe; ValueError saying what is wrong."""
    if not text:
        raise ValueError(f"{what} wrote no results")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} wrote results that are not JSON (too large, or interrupted): {exc}") from None
    if not isinstance(value, list):
        raise ValueError(f"{what} wrote {type(value).__name__}, not a list")
    return value


def check_answers(answers: list, n_calls: int) -> str | None:
    """Why the candidate's answers are not well-formed (None when they are)."""
    if len(answers) != n_calls:
        return f"the solution answered {len(answers)} of {n_calls} calls"
    for a in answers:
        ok = isinstance(a, list) and (
            (len(a) == 2 and a[0] == "ok")
            or (len(a) == 3 and a[0] == "raise" and all(isinstance(x, str) for x in a[1:]))
        )
        if not ok:
            return "the solution's answers are malformed"
    return None


def opaque_arguments(calls: list) -> bool:
    return any(_opaque(c) for c in calls)
