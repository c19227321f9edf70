"""A soak of `aios serve` with the default model: well-formed calls of every service, checked against
this process, mixed with hostile bytes and callers that leave.

At the same time, on loopback, against one host (three tenants: "steady", "raw" and "hostile"):
  * steady clients (threads here, each with its own aios.connect): forward (masks, chosen layers),
    kept passes with vjp and release, stateless vjp, forward_backward, embed, classify, greedy
    generation, extensions made, trained and dropped; every answer compared with the same call on
    the model loaded in this process;
  * a raw client (a process speaking the wire protocol through grpcio, as any client may): the
    Tokenizer service (definition, encode, decode, extensions made, read, written, saved,
    listed, loaded and deleted), decoders registered, listed and deleted, greedy generation, and a
    call through Chunked; its answers compared with what this process computed beforehand;
  * hostile processes: malformed requests to every method, at least MALFORMED of them: each
    malformation the wire tests know (with its expected code), random bytes in every field of
    valid requests, mutated serialized valid requests (bits flipped, cut, spliced, bytes inserted),
    random bytes as whole messages and chunks, missing and wrong keys. Each must get a coded
    status: never UNKNOWN or INTERNAL, never a dropped connection. What a mutation leaves valid is
    a valid call (its kept pass, extension or decoder is released again);
  * callers that leave: DISCONNECTS connections closed while their call computes (some by killing
    their process), and calls whose deadline expires while the host computes.

Afterwards the host still answers, and once idle (past HostOptions::release_memory_after, and
past its unclaimed_ttl for passes whose callers left just after the reply) its resident set is
within 5% of the baseline taken after a warm-up of the same traffic, and its thread and file
descriptor counts are back at (or below) the baseline.

AIOS_SOAK_SECONDS=N repeats the hostile and leaving traffic for N seconds (the bounded form, run by
make test, sends MALFORMED requests once); AIOS_SOAK_MALFORMED sets the count per round.
The same file is the clients' program: `python test_soak.py ROLE ...` (grpcio only, no torch). It is
one file of some 950 lines for that reason: the test and the processes it starts share one definition
of the traffic (the methods, the malformations and their expected codes).
"""
import base64
import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

SOAK_SECONDS = float(os.environ.get("AIOS_SOAK_SECONDS", "0"))
MALFORMED = int(os.environ.get("AIOS_SOAK_MALFORMED", "10000"))
HOSTILE_PROCESSES = 2
DISCONNECTS = 100          # of which KILLED_PROCESSES by SIGKILL of their process
KILLED_PROCESSES = 4
DEADLINE_CALLS = 40
STEADY_CLIENTS, STEADY_ROUNDS = 2, 12
HOSTILE_MAX_TOKENS = 64    # the hostile tenant's quota: what a mutation leaves valid stays small
RSS_TOLERANCE = 0.05
# A kept pass whose caller left just after the host's reply went out is released once unclaimed
# for this long (HostOptions::unclaimed_ttl, 60 s by default), at the next ForwardKeep: the test
# waits for it before it measures memory.
UNCLAIMED_TTL = 5.0

# Status codes (grpc.StatusCode values), so that the clients need no import to name them.
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4, 5
ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION = 6, 7, 8, 9
OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 11, 12, 13, 14, 16
# What a malformed request may be answered with: a code naming what is wrong with it (OK where a
# mutation left the request valid). UNAVAILABLE would mean a lost connection, UNKNOWN and INTERNAL
# a failure the host did not classify.
MALFORMED_CODES = {OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED, FAILED_PRECONDITION,
                   OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED, PERMISSION_DENIED}

FLOAT32, BFLOAT16, FLOAT16, INT32, INT64, BOOL = 1, 2, 3, 4, 5, 6


# ---- the protobuf wire format, as much of it as aios.v1's messages use -------------------------

def varint(n):
    n &= (1 << 64) - 1  # negative int64s as ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def vfield(number, n):
    return varint(number << 3) + varint(n)


def bfield(number, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def dfield(number, x):  # double
    return varint(number << 3 | 1) + struct.pack("<d", x)


def tensor(dtype, shape, data):
    return vfield(1, dtype) + bfield(2, b"".join(varint(d) for d in shape)) + bfield(3, data)


def floats(shape, rng, scale=0.5):
    count = 1
    for d in shape:
        count *= d
    return tensor(FLOAT32, shape, struct.pack(f"<{count}f", *(rng.gauss(0, scale) for _ in range(count))))


def longs(shape, values):
    return tensor(INT64, shape, struct.pack(f"<{len(values)}q", *values))


def read_varint(data, i):
    n = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("bad varint")
        b = data[i]
        n |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return n, i


def parse(data):
    """number -> list of values (ints for varints, bytes otherwise)."""
    out, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, i = read_varint(data, i)
        elif kind == 2:
            n, i = read_varint(data, i)
            value, i = data[i:i + n], i + n
        elif kind in (1, 5):
            size = 8 if kind == 1 else 4
            value, i = data[i:i + size], i + size
        else:
            raise ValueError(f"wire type {kind}")
        out.setdefault(number, []).append(value)
    return out


def fields(data):
    """The top-level fields of a serialized message as (start, end, number, kind) spans, as far
    as the bytes read as a message (a bytes or string field's content may not)."""
    spans, i = [], 0
    try:
        while i < len(data):
            start = i
            key, i = read_varint(data, i)
            kind = key & 7
            if kind == 0:
                _, i = read_varint(data, i)
            elif kind == 2:
                n, i = read_varint(data, i)
                i += n
            elif kind in (1, 5):
                i += 8 if kind == 1 else 4
            else:
                break
            if i > len(data):
                break
            spans.append((start, i, key >> 3, kind))
    except ValueError:
        pass
    return spans


def tensor_values(message):
    """(dtype, shape, data) of a serialized Tensor."""
    t = parse(message)
    shape, i, packed = [], 0, t.get(2, [b""])[0]
    while i < len(packed):
        d, i = read_varint(packed, i)
        shape.append(d)
    return t.get(1, [0])[0], shape, t.get(3, [b""])[0]


# ---- the clients (run as `python test_soak.py ROLE ...`, grpcio only) --------------------------

def channel_to(address):
    import grpc

    limit = 64 << 20
    return grpc.insecure_channel(address, options=[("grpc.max_send_message_length", limit),
                                                   ("grpc.max_receive_message_length", limit),
                                                   ("grpc.enable_retries", 0)])


class Wire:
    """Raw calls to one host: bytes in, (code, reply bytes or stream of them, details) out."""

    def __init__(self, address, key):
        self.channel = channel_to(address)
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()

    def pick(self, metadata):
        return self.metadata if metadata is None else metadata

    def call(self, method, request, timeout=120.0, metadata=None):
        import grpc

        service = method.split("/")[1].split(".")[-1]
        try:
            if method == "/aios.v1.Generation/Generate":
                stream = self.channel.unary_stream(method)(request, timeout=timeout, metadata=self.pick(metadata))
                return OK, list(stream), ""
            if service == "Chunked":
                stream = self.channel.stream_stream(method)(iter(request), timeout=timeout, metadata=self.pick(metadata))
                return OK, list(stream), ""
            reply = self.channel.unary_unary(method)(request, timeout=timeout, metadata=self.pick(metadata))
            return OK, reply, ""
        except grpc.RpcError as e:
            return e.code().value[0], None, e.details() or ""


class Info:
    def __init__(self, wire):
        code, reply, details = wire.call("/aios.v1.Latent/Info", b"")
        assert code == OK, details
        m = parse(reply)
        self.V, self.D, self.layers = m[2][0], m[3][0], m[4][0]
        self.max_positions, self.max_batch = m[9][0], m[13][0]


def valid_requests(info, rng, key_suffix=""):
    """One valid request of each method (small shapes), as (method, bytes or chunk list)."""
    D, V = info.D, info.V
    x = floats([1, 1, D], rng)  # one token: a request a mutation leaves valid computes little
    cot = bfield(1, floats([1, 1, D], rng))
    fwd_options = bfield(2, bfield(2, tensor(BOOL, [1, 1], b"\x01")) + vfield(3, 1))
    decoder_json = json.dumps({"kind": "linear", "sizes": {"hidden": D, "out": 2, "span": 1}}).encode()
    chunk = lambda method, data: [bfield(1, method) + bfield(2, data)]  # noqa: E731
    return [
        ("/aios.v1.Latent/Info", b""),
        ("/aios.v1.Latent/Embed", bfield(1, longs([1, 3], [1, 2, 3]))),
        ("/aios.v1.Latent/Forward", bfield(1, x) + fwd_options),
        ("/aios.v1.Latent/Classify", bfield(1, floats([1, D], rng))),
        ("/aios.v1.Gradient/ForwardKeep", bfield(1, x)),
        ("/aios.v1.Gradient/Vjp", vfield(1, rng.getrandbits(47)) + bfield(2, cot)),
        ("/aios.v1.Gradient/Release", vfield(1, rng.getrandbits(47))),
        ("/aios.v1.Gradient/VjpStateless", bfield(1, x) + bfield(3, cot)),
        ("/aios.v1.Gradient/ForwardBackward", bfield(1, x) + bfield(3, bfield(1, longs([1, 1], [5])))),
        ("/aios.v1.Gradient/Kept", b""),
        ("/aios.v1.Tokenizer/Definition", b""),
        ("/aios.v1.Tokenizer/Encode", bfield(1, "Hello world") + vfield(2, 1)),
        ("/aios.v1.Tokenizer/Decode", bfield(1, bfield(1, b"".join(varint(i) for i in (1, 2, 3))))),
        ("/aios.v1.Tokenizer/CreateExtension", bfield(1, f"<soak{rng.getrandbits(32)}{key_suffix}>")),
        ("/aios.v1.Tokenizer/ListExtensions", b""),
        ("/aios.v1.Tokenizer/ReadRows", bfield(1, "0.0.1")),
        ("/aios.v1.Tokenizer/WriteRows", bfield(1, "0.0.1") + bfield(2, bfield(1, floats([1, D], rng)) +
                                                                     bfield(2, floats([1, D], rng)))),
        ("/aios.v1.Tokenizer/SaveExtension", bfield(1, "0.0.1") + bfield(2, "saved")),
        ("/aios.v1.Tokenizer/LoadExtension", bfield(1, "saved")),
        ("/aios.v1.Tokenizer/DeleteExtension", bfield(1, "0.0.1")),
        ("/aios.v1.Generation/Generate", bfield(1, x) + vfield(4, 1)),
        ("/aios.v1.Generation/RegisterDecoder", bfield(1, "dec") + bfield(2, bfield(1, "decoder.json") +
                                                                          bfield(2, decoder_json))),
        ("/aios.v1.Generation/ListDecoders", b""),
        ("/aios.v1.Generation/DeleteDecoder", bfield(1, "dec")),
        ("/aios.v1.Chunked/Call", chunk("/aios.v1.Latent/Embed", bfield(1, longs([1, 3], [1, 2, 3])))),
    ]


def structured_malformations(info, rng):
    """Each malformation the wire tests know, as (method, request, expected code)."""
    D, V, L = info.D, info.V, info.layers
    x = floats([1, 2, D], rng)
    nan = tensor(FLOAT32, [1, 2, D], struct.pack("<f", float("nan")) * (2 * D))
    bad = [
        ("/aios.v1.Latent/Forward", bfield(1, tensor(FLOAT32, [1, 2, D], b"\0" * (8 * D - 1))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(0, [1, 2, D], b"")), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(99, [1, 2, D], b"\0" * (8 * D))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(FLOAT32, [1, -2, D], b"")), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(FLOAT32, [1 << 20, 1 << 20, D], b"\0" * 16)), RESOURCE_EXHAUSTED),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(FLOAT32, [1, 1, 1, 1, 1], b"\0" * 4)), RESOURCE_EXHAUSTED),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(INT64, [1, 2, D], b"\0" * (16 * D))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(FLOAT32, [1, 2, D + 1], b"\0" * (8 * (D + 1)))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(FLOAT32, [2, D], b"\0" * (8 * D))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, nan), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(FLOAT32, [info.max_batch + 1, 1, D], b"\0" * (4 * D * (info.max_batch + 1)))),
         RESOURCE_EXHAUSTED),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(FLOAT32, [1, HOSTILE_MAX_TOKENS + 1, D],
                                                     b"\0" * (4 * D * (HOSTILE_MAX_TOKENS + 1)))), RESOURCE_EXHAUSTED),
        ("/aios.v1.Latent/Forward", bfield(1, x) + bfield(2, vfield(3, L + 1)), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, x) + bfield(2, vfield(3, -1)), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, x) + bfield(2, b"".join(vfield(3, 0) for _ in range(L + 2))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, x) + bfield(2, bfield(2, tensor(BOOL, [1, 3], b"\1\1\1"))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, x) + bfield(2, bfield(2, tensor(BOOL, [1, 2], b"\1\2"))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, x) + bfield(2, bfield(1, longs([1, 3], [0, 1, 2]))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, x) + bfield(2, bfield(1, longs([1, 2], [0, -5]))), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, x) + bfield(2, bfield(1, longs([2], [0, info.max_positions + 7]))),
         INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", bfield(1, x) + bfield(2, bfield(6, bfield(1, "no.such.extension"))), NOT_FOUND),
        ("/aios.v1.Latent/Forward", bfield(1, tensor(FLOAT32, [1, 0, D], b"")), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Embed", bfield(1, longs([1, 2], [1, V])), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Embed", bfield(1, longs([1, 2], [1, -1])), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Embed", bfield(1, floats([1, 2], rng)), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Embed", bfield(1, longs([1, 1, 2], [1, 2])), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Classify", bfield(1, floats([1, D + 1], rng)), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Classify", bfield(1, longs([1, 2], [1, 2])), INVALID_ARGUMENT),
        ("/aios.v1.Latent/Classify", bfield(1, tensor(FLOAT32, [HOSTILE_MAX_TOKENS + 1, D],
                                                      b"\0" * (4 * D * (HOSTILE_MAX_TOKENS + 1)))), RESOURCE_EXHAUSTED),
        ("/aios.v1.Gradient/Vjp", vfield(1, 2 ** 47 + rng.getrandbits(40)) + bfield(2, bfield(1, x)), NOT_FOUND),
        ("/aios.v1.Gradient/Vjp", vfield(1, (1 << 48) + 5) + bfield(2, bfield(1, x)), NOT_FOUND),
        ("/aios.v1.Gradient/Release", vfield(1, 2 ** 47 + rng.getrandbits(40)), NOT_FOUND),
        ("/aios.v1.Gradient/Release", vfield(1, (7 << 48) + 1), NOT_FOUND),
        ("/aios.v1.Gradient/ForwardBackward", bfield(1, x), INVALID_ARGUMENT),
        ("/aios.v1.Gradient/ForwardBackward", bfield(1, x) + bfield(3, bfield(1, longs([1, 2], [5, V + 3]))), INVALID_ARGUMENT),
        ("/aios.v1.Gradient/ForwardBackward", bfield(1, x) + bfield(3, bfield(1, longs([1, 3], [5, 6, 7]))), INVALID_ARGUMENT),
        ("/aios.v1.Gradient/ForwardBackward", bfield(1, x) + bfield(3, bfield(1, longs([1, 2], [5, 6])) +
                                                                   bfield(2, tensor(FLOAT32, [1, 2], struct.pack("<2f", 1, -1)))),
         INVALID_ARGUMENT),
        ("/aios.v1.Gradient/ForwardBackward", bfield(1, x) + bfield(3, bfield(1, longs([1, 2], [5, 6]))) + vfield(5, 0),
         INVALID_ARGUMENT),
        ("/aios.v1.Gradient/ForwardBackward", bfield(1, x) + bfield(3, bfield(1, longs([1, 2], [5, 6]))) + vfield(5, 1 << 40),
         RESOURCE_EXHAUSTED),
        ("/aios.v1.Gradient/ForwardBackward", bfield(1, x) + bfield(4, bfield(2, x) + dfield(6, 0.0)), INVALID_ARGUMENT),
        ("/aios.v1.Gradient/ForwardBackward", bfield(1, x) + bfield(4, bfield(1, floats([1, 2, V - 1], rng))), INVALID_ARGUMENT),
        ("/aios.v1.Gradient/VjpStateless", bfield(1, x) + bfield(3, bfield(1, floats([1, 3, D], rng))), INVALID_ARGUMENT),
        ("/aios.v1.Gradient/VjpStateless", bfield(1, x) + bfield(3, bfield(3, floats([1, 2, 5], rng))), INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/Encode", bfield(1, "hello") + bfield(3, "no.such.extension"), NOT_FOUND),
        ("/aios.v1.Tokenizer/Decode", bfield(1, bfield(1, varint(V + 1000))), INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/Decode", bfield(1, bfield(1, varint(-3))), INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/CreateExtension", b"", INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/CreateExtension", bfield(1, "a"), ALREADY_EXISTS),
        ("/aios.v1.Tokenizer/CreateExtension", bfield(1, "<q>") + bfield(1, "<q>"), INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/CreateExtension", bfield(1, "<q>") + vfield(2, 1) + vfield(3, V), INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/CreateExtension", bfield(1, "<q>") + vfield(2, 2), INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/CreateExtension", bfield(1, "<q>") + vfield(2, 7), INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/ReadRows", bfield(1, "no.such.extension"), NOT_FOUND),
        ("/aios.v1.Tokenizer/WriteRows", bfield(1, "no.such.extension"), NOT_FOUND),
        ("/aios.v1.Tokenizer/SaveExtension", bfield(1, "no.such.extension") + bfield(2, "../escape"), INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/LoadExtension", bfield(1, "never-saved"), NOT_FOUND),
        ("/aios.v1.Tokenizer/LoadExtension", bfield(1, "../../etc"), INVALID_ARGUMENT),
        ("/aios.v1.Tokenizer/DeleteExtension", bfield(1, "no.such.extension"), NOT_FOUND),
        ("/aios.v1.Generation/Generate", bfield(1, x) + vfield(4, 0), INVALID_ARGUMENT),
        ("/aios.v1.Generation/Generate", bfield(1, x) + vfield(4, 1 << 40), RESOURCE_EXHAUSTED),
        ("/aios.v1.Generation/Generate", bfield(1, x) + vfield(4, 2) + bfield(8, vfield(1, V) + vfield(2, V + 1) +
                                                                           bfield(3, "nobody")), NOT_FOUND),
        ("/aios.v1.Generation/Generate", bfield(1, x) + vfield(4, 2) + bfield(5, dfield(1, -1.0)), INVALID_ARGUMENT),
        ("/aios.v1.Generation/Generate", bfield(1, x) + vfield(4, 2) + bfield(5, dfield(3, 2.0)), INVALID_ARGUMENT),
        ("/aios.v1.Generation/Generate", bfield(1, nan) + vfield(4, 2), INVALID_ARGUMENT),
        ("/aios.v1.Generation/RegisterDecoder", bfield(1, "../x") + bfield(2, bfield(1, "decoder.json") + bfield(2, "{}")),
         INVALID_ARGUMENT),
        ("/aios.v1.Generation/RegisterDecoder", bfield(1, "d"), INVALID_ARGUMENT),
        ("/aios.v1.Generation/RegisterDecoder", bfield(1, "d") + bfield(2, bfield(1, "a/b") + bfield(2, "{}")), INVALID_ARGUMENT),
        ("/aios.v1.Generation/RegisterDecoder", bfield(1, "d") + bfield(2, bfield(1, "decoder.json") + bfield(2, "{not json")),
         INVALID_ARGUMENT),
        ("/aios.v1.Latent/Forward", os.urandom(3) + b"\xff", INVALID_ARGUMENT),  # not a message at all
        ("/aios.v1.Tokenizer/Encode", bfield(1, b"\xff\xfe"), INVALID_ARGUMENT),  # a string of invalid UTF-8
        ("/aios.v1.Generation/DeleteDecoder", bfield(1, "nobody"), NOT_FOUND),
        ("/aios.v1.Chunked/Call", [bfield(1, "/aios.v1.No/Such") + bfield(2, b"")], UNIMPLEMENTED),
        ("/aios.v1.Chunked/Call", [], INVALID_ARGUMENT),
        ("/aios.v1.Chunked/Call", [bfield(1, "/aios.v1.Latent/Forward") + bfield(2, b"\xff\xff\xff")], INVALID_ARGUMENT),
    ]
    return bad


def random_field_value(rng):
    """A field of a random number and wire type holding random content."""
    number = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, rng.randrange(1, 1 << 29)])
    kind = rng.choice([0, 1, 2, 5])
    if kind == 0:
        return varint(number << 3) + varint(rng.choice([0, 1, -1, 1 << 62, rng.getrandbits(64), rng.randrange(100)]))
    if kind == 2:
        data = os.urandom(rng.randrange(64))
        return varint(number << 3 | 2) + varint(len(data)) + data
    return varint(number << 3 | kind) + os.urandom(8 if kind == 1 else 4)


def mutate(request, rng):
    """A malformed (or, by chance, still valid) variant of a serialized request, and how it was made."""
    if isinstance(request, list):  # Chunked: mutate one chunk, or add one of random bytes
        chunks = list(request)
        if chunks and rng.random() < 0.7:
            i = rng.randrange(len(chunks))
            chunks[i], how = mutate(chunks[i], rng)
            return chunks, "chunk " + how
        chunks.insert(rng.randrange(len(chunks) + 1), os.urandom(rng.randrange(1, 64)))
        return chunks, "chunk of random bytes"
    data = bytearray(request)
    spans = fields(request)
    # Bits flipped anywhere (choice 7) mostly land in a tensor's data and leave a valid request to
    # compute: rarer than the others, which mostly do not.
    choice = rng.choices(range(8), weights=[2, 3, 2, 2, 2, 2, 3, 1])[0]
    if choice == 0 or not spans:
        return os.urandom(rng.randrange(1, 256)), "random message"
    if choice == 1:  # random bytes in a field's place (same number, any length)
        start, end, number, _ = rng.choice(spans)
        return bytes(data[:start]) + bfield(number, os.urandom(rng.randrange(0, 48))) + bytes(data[end:]), "field replaced"
    if choice == 2:  # a random field added or a field's wire type changed
        start, end, number, kind = rng.choice(spans)
        other = rng.choice([k for k in (0, 1, 2, 5) if k != kind])
        if rng.random() < 0.5:
            return bytes(data) + random_field_value(rng), "field added"
        return bytes(data[:start]) + varint(number << 3 | other) + os.urandom(8) + bytes(data[end:]), "wire type changed"
    if choice == 3:  # bits flipped in the message's structure (keys and lengths: a field's first bytes)
        for _ in range(rng.randrange(1, 4)):
            start, end, _, _ = rng.choice(spans)
            i = rng.randrange(start, min(end, start + 6))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data), "structure bits flipped"
    if choice == 4:  # cut short
        return bytes(data[:rng.randrange(len(data))]), "truncated"
    if choice == 5:  # random bytes inserted
        i = rng.randrange(len(data) + 1)
        return bytes(data[:i]) + os.urandom(rng.randrange(1, 16)) + bytes(data[i:]), "bytes inserted"
    if choice == 6:  # a field inside a nested message replaced (tensors' dtype, shape, data; options)
        nested = [s for s in spans if s[3] == 2]
        if nested:
            start, end, number, _ = rng.choice(nested)
            _, body_start = read_varint(request, start)
            _, body_start = read_varint(request, body_start)
            inner, how = mutate(request[body_start:end], rng)
            return bytes(data[:start]) + bfield(number, inner) + bytes(data[end:]), "nested " + how
        return bytes(data) + random_field_value(rng), "field added"
    # any bits flipped (in tensors' data too: mostly still a valid request)
    for _ in range(rng.randrange(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data), "bits flipped"


def release_what_it_made(wire, method, request, reply, code):
    """A mutation that stayed valid made something: give it back, as a well-behaved caller would."""
    if code != OK or reply is None:
        return
    try:
        if method == "/aios.v1.Gradient/ForwardKeep":
            handle = parse(reply).get(3, [0])[0]
            wire.call("/aios.v1.Gradient/Release", vfield(1, handle))
        elif method == "/aios.v1.Tokenizer/CreateExtension" or method == "/aios.v1.Tokenizer/LoadExtension":
            wire.call("/aios.v1.Tokenizer/DeleteExtension", bfield(1, parse(reply)[1][0]))
        elif method == "/aios.v1.Generation/RegisterDecoder":
            wire.call("/aios.v1.Generation/DeleteDecoder", bfield(1, parse(request).get(1, [b""])[0]))
        elif method == "/aios.v1.Tokenizer/SaveExtension":
            wire.call("/aios.v1.Tokenizer/DeleteExtension", bfield(2, parse(request).get(2, [b""])[0]))
    except (ValueError, IndexError, KeyError):
        pass  # a reply this client cannot read tells nothing to release


def hostile(address, key, seed, count):
    """Sends `count` malformed requests; prints a JSON report of the codes they got."""
    rng = random.Random(seed)
    wire = Wire(address, key)
    info = Info(wire)
    counts, unexpected = {}, []
    started = time.monotonic()
    structured = structured_malformations(info, rng)
    valid = valid_requests(info, rng, key_suffix=str(seed))
    for n in range(count):
        pick = rng.random()
        expected = None
        metadata = None
        if pick < 0.25:
            method, request, expected = structured[n % len(structured)]
            how = "known malformation"
        elif pick < 0.3:
            method, request = rng.choice(valid)
            metadata, how, expected = rng.choice([((), "no key", UNAUTHENTICATED),
                                                  ((("authorization", "Bearer not-a-key"),), "wrong key", UNAUTHENTICATED),
                                                  ((("authorization", "Basic x"),), "not a bearer key", UNAUTHENTICATED)])
            if method == "/aios.v1.Chunked/Call" and rng.random() < 0.5:
                request = []
        else:
            method, request = rng.choice(valid)
            request, how = mutate(request, rng)
        code, reply, details = wire.call(method, request, timeout=60.0, metadata=metadata)
        release_what_it_made(wire, method, request, reply, code)
        counts[f"{code}"] = counts.get(f"{code}", 0) + 1
        counts[f"{how.split()[0]} {code}"] = counts.get(f"{how.split()[0]} {code}", 0) + 1
        wrong = code not in MALFORMED_CODES if expected is None else code != expected
        if wrong and len(unexpected) < 50:
            sample = request if isinstance(request, bytes) else b"|".join(request)
            unexpected.append({"method": method, "how": how, "code": code, "expected": expected, "details": details[:200],
                               "request": base64.b64encode(sample[:300]).decode()})
        elif wrong:
            unexpected.append(None)
    print(json.dumps({"sent": count, "counts": counts, "unexpected": unexpected,
                      "seconds": round(time.monotonic() - started, 1)}), flush=True)


def leaver(address, key, seed, count, mode):
    """Calls that computing would take a while, left mid-call: `mode` "disconnect" closes the
    connection (a fresh one per call) after a random pause, "deadline" gives each a deadline of
    5 ms to 0.5 s. Prints a JSON report; "hold" starts calls and waits to be killed."""
    import grpc

    rng = random.Random(seed)
    info = Info(Wire(address, key))
    D = info.D
    metadata = (("authorization", f"Bearer {key}"),)
    report = {"calls": 0, "codes": {}}
    # "disconnect": `count` callers that really left mid-call. A call the host answered within the
    # pause does not count (on a fast or idle host some do), so more are started, at most 3 x count.
    left = 0
    for i in range(count if mode == "deadline" else 3 * count if mode == "disconnect" else 1 << 30):
        if mode == "disconnect" and left == count:
            break
        B, T = rng.randint(1, 2), rng.randint(16, 48)
        x = floats([B, T, D], rng)
        method, request = rng.choice([
            ("/aios.v1.Latent/Forward", bfield(1, x)),
            # Kept passes small: one whose caller leaves just after the host replied stays until
            # HostOptions::unclaimed_ttl (docs/hosting.md), longer than this test waits.
            ("/aios.v1.Gradient/ForwardKeep", bfield(1, floats([1, 8, D], rng))),
            ("/aios.v1.Gradient/VjpStateless", bfield(1, x) + bfield(3, bfield(1, x))),
            ("/aios.v1.Gradient/ForwardBackward", bfield(1, x) + bfield(3, bfield(1, longs([B, T], [7] * (B * T))))),
            ("/aios.v1.Generation/Generate", bfield(1, floats([1, 4, D], rng)) + vfield(4, 24)),
        ])
        channel = channel_to(address)
        stream = method.endswith("Generate")
        call = (channel.unary_stream if stream else channel.unary_unary)(method)
        if mode == "deadline":
            timeout = rng.choice([0.005, 0.02, 0.05, 0.1, 0.2, 0.5])
            try:
                reply = call(request, timeout=timeout, metadata=metadata)
                reply = list(reply) if stream else reply
                code = OK
                if method.endswith("ForwardKeep"):  # answered in time: release it as a caller would
                    Wire(address, key).call("/aios.v1.Gradient/Release", vfield(1, parse(reply).get(3, [0])[0]))
            except grpc.RpcError as e:
                code = e.code().value[0]
        else:
            if stream:
                future = call(request, timeout=120, metadata=metadata)
            else:
                future = call.future(request, timeout=120, metadata=metadata)
            if mode == "hold":
                print("calling", flush=True)
            time.sleep(rng.uniform(0.01, 0.3))
            if not stream and future.done() and future.code() == grpc.StatusCode.OK:
                code = OK  # answered before it could leave
                if method.endswith("ForwardKeep"):
                    Wire(address, key).call("/aios.v1.Gradient/Release", vfield(1, parse(future.result()).get(3, [0])[0]))
            else:
                channel.close()  # the connection goes; the host sees its caller leave
                code = -1
                left += 1
        channel.close()
        report["calls"] += 1
        report["codes"][str(code)] = report["codes"].get(str(code), 0) + 1
    print(json.dumps(report), flush=True)


def raw_wellformed(address, key, plan_path):
    """Well-formed calls of the Tokenizer and Generation services and of Chunked, through the wire;
    answers compared with what the test computed beforehand (the plan). Prints a JSON report."""
    plan = json.loads(Path(plan_path).read_text())
    wire = Wire(address, key)
    info = Info(wire)
    failures, calls = [], 0

    def call(method, request, what):
        nonlocal calls
        calls += 1
        code, reply, details = wire.call(method, request)
        if code != OK:
            failures.append(f"{what}: {method} answered {code}: {details}")
        return reply

    for round_ in range(plan["rounds"]):
        definition = parse(call("/aios.v1.Tokenizer/Definition", b"", "definition") or b"")
        if hashlib.sha256(definition.get(1, [b""])[0]).hexdigest() != plan["tokenizer_sha256"]:
            failures.append("Definition: not the model's tokenizer.json")
        for text, ids in plan["encode"]:
            reply = parse(call("/aios.v1.Tokenizer/Encode", bfield(1, text) + vfield(2, 1), "encode") or b"")
            got = []
            for item in reply.get(1, []):
                packed = parse(item).get(1, [b""])[0]
                i = 0
                while i < len(packed):
                    v, i = read_varint(packed, i)
                    got.append(v)
            if got != ids:
                failures.append(f"Encode {text!r}: {got} != {ids}")
            reply = parse(call("/aios.v1.Tokenizer/Decode", bfield(1, bfield(1, b"".join(varint(i) for i in ids))), "decode") or b"")
            if reply.get(1, [b""])[0].decode("utf-8", "replace") != plan["decoded"][text]:
                failures.append(f"Decode of {text!r}: {reply.get(1)}")

        # An extension: made, its rows read, written, read back, saved, listed, loaded, deleted.
        token = f"<raw{round_}>"
        made = parse(call("/aios.v1.Tokenizer/CreateExtension", bfield(1, token), "extension") or b"")
        ext = made.get(1, [b""])[0].decode()
        if made.get(3, [0])[0] != info.V:
            failures.append(f"CreateExtension: first id {made.get(3)} != {info.V}")
        rows = parse(call("/aios.v1.Tokenizer/ReadRows", bfield(1, ext), "rows") or b"")
        if tensor_values(rows.get(1, [b""])[0])[1] != [1, info.D]:
            failures.append("ReadRows: not [1, D]")
        new = bfield(1, tensor(FLOAT32, [1, info.D], struct.pack(f"<{info.D}f", *([0.25] * info.D)))) + \
            bfield(2, tensor(FLOAT32, [1, info.D], struct.pack(f"<{info.D}f", *([-0.5] * info.D))))
        call("/aios.v1.Tokenizer/WriteRows", bfield(1, ext) + bfield(2, new), "rows")
        back = parse(call("/aios.v1.Tokenizer/ReadRows", bfield(1, ext), "rows") or b"")
        if tensor_values(back.get(1, [b""])[0])[2] != struct.pack(f"<{info.D}f", *([0.25] * info.D)):
            failures.append("ReadRows after WriteRows: not the rows written")
        name = f"raw-{round_}"
        call("/aios.v1.Tokenizer/SaveExtension", bfield(1, ext) + bfield(2, name), "save")
        listed = parse(call("/aios.v1.Tokenizer/ListExtensions", b"", "list") or b"")
        if name.encode() not in listed.get(2, []) or not any(parse(e).get(1, [b""])[0] == ext.encode()
                                                             for e in listed.get(1, [])):
            failures.append(f"ListExtensions: {name} or {ext} missing")
        loaded = parse(call("/aios.v1.Tokenizer/LoadExtension", bfield(1, name), "load") or b"")
        if tensor_values(parse(loaded.get(4, [b""])[0]).get(2, [b""])[0])[2] != struct.pack(f"<{info.D}f", *([-0.5] * info.D)):
            failures.append("LoadExtension: not the rows saved")
        for ref in (bfield(1, ext), bfield(1, loaded.get(1, [b""])[0]), bfield(2, name)):
            call("/aios.v1.Tokenizer/DeleteExtension", ref, "delete")

        # A decoder registered, listed and deleted; a greedy generation (ids as in-process).
        decoder = f"raw-{round_}"
        files = b"".join(bfield(2, bfield(1, f) + bfield(2, base64.b64decode(data))) for f, data in plan["decoder_files"].items())
        call("/aios.v1.Generation/RegisterDecoder", bfield(1, decoder) + files, "decoder")
        if decoder.encode() not in parse(call("/aios.v1.Generation/ListDecoders", b"", "decoders") or b"").get(1, []):
            failures.append(f"ListDecoders: {decoder} missing")
        prompt = base64.b64decode(plan["prompt"])
        steps = call("/aios.v1.Generation/Generate", bfield(1, prompt) + vfield(4, plan["new_tokens"]), "generate") or []
        ids = [struct.unpack("<q", tensor_values(parse(s)[2][0])[2])[0] for s in steps]
        if ids != plan["generated"]:
            failures.append(f"Generate: {ids} != {plan['generated']}")
        call("/aios.v1.Generation/DeleteDecoder", bfield(1, decoder), "decoder")

        # Chunked: an Embed carried in two chunks, answered as the unary call.
        ids = plan["embed_ids"]
        request = bfield(1, longs([1, len(ids)], ids))
        chunks = [bfield(1, "/aios.v1.Latent/Embed") + bfield(2, request[:5]), bfield(2, request[5:])]
        reply = b"".join(parse(c).get(2, [b""])[0] for c in (call("/aios.v1.Chunked/Call", chunks, "chunked") or []))
        if hashlib.sha256(tensor_values(reply)[2]).hexdigest() != plan["embed_sha256"]:
            failures.append("Chunked Embed: not the in-process rows")
    print(json.dumps({"calls": calls, "failures": failures}), flush=True)


if __name__ == "__main__":
    role, address, key = sys.argv[1:4]
    if role == "hostile":
        hostile(address, key, int(sys.argv[4]), int(sys.argv[5]))
    elif role == "leaver":
        leaver(address, key, int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    elif role == "raw":
        raw_wellformed(address, key, sys.argv[4])
    sys.exit(0)


# ---- the test -----------------------------------------------------------------------------------

import pytest  # noqa: E402  (the clients above run without it)


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def rss(pid):
    return proc_status(pid, "VmRSS") * 1024


def threads(pid):
    return proc_status(pid, "Threads")


# gRPC's own pools size themselves: its timer and event-engine threads (2-3 each at idle, one
# retired only when it next wakes) and its executor (threads added under load up to twice the
# cores, kept until shutdown). They may stay above the baseline up to those bounds; every other
# thread (aios's compute threads and their OpenMP teams, gRPC's server threads) must be back.
SELF_SIZING = {"grpc_global_tim": 3, "event_engine": 3, "default-executo": 2 * (os.cpu_count() or 1)}


def thread_names(pid):
    names = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
        except FileNotFoundError:  # ended meanwhile
            continue
        names[name] = names.get(name, 0) + 1
    return names


def extra_threads(pid, baseline):
    """Threads beyond the baseline's (by name), gRPC's self-sizing pools up to their idle size."""
    extra = {}
    for name, n in thread_names(pid).items():
        allowed = max(baseline.get(name, 0), SELF_SIZING.get(name, 0))
        if n > allowed:
            extra[name] = n - allowed
    return extra


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_client(*args):
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def settle(measure, target, within, seconds=60.0):
    """Polls measure() until it is within `within` of target (the host ends what the load left:
    idle release, connections, threads); returns the last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = measure()
        if abs(value - target) <= within or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def close(a, b, tol=1e-4):
    import torch

    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol)


def steady_client(address, local, seed, rounds, failures, counts, lock):
    """Well-formed calls of the Latent and Gradient APIs, extensions and generation, each compared
    with the same call in this process."""
    import torch

    import aios

    try:
        remote = aios.connect(address, api_key="key-steady", timeout=300)
    except Exception as e:  # noqa: BLE001 (reported, not raised, from a thread)
        failures.append(f"steady {seed}: connect: {e!r}")
        return
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    V, D, L = local.config.vocab_size, local.config.hidden_size, local.config.num_layers
    kinds = ["forward", "keep_vjp", "vjp_stateless", "forward_backward", "embed", "classify", "generate", "extension"]
    for i in range(rounds):
        kind = kinds[(i + seed) % len(kinds)]
        B, T = rng.randint(1, 2), rng.randint(2, 12)
        x = torch.randn(B, T, D, generator=g) * 0.5
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0, : rng.randint(0, T - 1)] = False
        where = f"steady {seed} round {i} {kind} {B}x{T}"
        try:
            if kind == "forward":
                layers = [rng.randint(0, L)]
                got, want = remote.forward(x, mask=mask, layers=layers), local.forward(x, mask=mask, layers=layers)
                ok = close(got.hidden, want.hidden) and close(got.layers[0], want.layers[0])
            elif kind == "keep_vjp":
                cot = torch.randn(B, T, D, generator=g)
                kept = remote.forward(x, mask=mask, keep=True)
                grad = remote.vjp(kept.handle, grad_hidden=cot)
                remote.release(kept.handle)
                ok = close(kept.hidden, local.forward(x, mask=mask).hidden) and \
                    close(grad, local.vjp(x, mask=mask, grad_hidden=cot))
            elif kind == "vjp_stateless":
                cot = torch.randn(B, T, D, generator=g)
                ok = close(remote.vjp(x, grad_hidden=cot), local.vjp(x, grad_hidden=cot))
            elif kind == "forward_backward":
                targets = torch.randint(0, V, (B, T), generator=g)
                a, b = remote.forward_backward(x, targets=targets, mask=mask), local.forward_backward(x, targets=targets, mask=mask)
                ok = abs(a.loss.item() - b.loss.item()) <= 1e-5 * abs(b.loss.item()) and close(a.grad_latents, b.grad_latents)
            elif kind == "embed":
                ids = torch.randint(0, V, (B, T), generator=g)
                ok = torch.equal(remote.embed(ids), local.embed(ids))
            elif kind == "classify":
                ok = close(remote.classify(x[:, -1]), local.classify(x[:, -1]))
            elif kind == "generate":
                new = rng.randint(1, 6)
                a, b = remote.generate(x, max_new_tokens=new), local.generate(x, max_new_tokens=new)
                ok = torch.equal(a.ids, b.ids) and close(a.hidden, b.hidden)
            else:  # an extension made on the host, trained here, used in a call, dropped (deleted there)
                tokens = [f"<s{seed}_{i}>"]
                ext_r, ext_l = remote.extend(tokens, init=1), local.extend(tokens, init=1)
                rows = torch.randn(1, D, generator=g) * 0.1
                with torch.no_grad():
                    for e in (ext_r, ext_l):
                        e.embedding_rows.copy_(rows)
                        e.classifier_rows.copy_(rows)
                ids = torch.tensor([[1, V, 2]])
                got = remote.classify(remote.forward(remote.embed(ids, extension=ext_r)).hidden, extension=ext_r)
                want = local.classify(local.forward(local.embed(ids, extension=ext_l)).hidden, extension=ext_l)
                ok = close(got, want)
                del ext_r, ext_l
            with lock:
                counts["well-formed calls"] = counts.get("well-formed calls", 0) + 1
            if not ok:
                failures.append(f"{where}: the host's answer differs from this process's")
        except Exception as e:  # noqa: BLE001
            failures.append(f"{where}: {e!r}")


def raw_plan(tmp_path, default_model, local, rounds):
    """What the raw client must get back, computed here."""
    import torch

    import aios
    from aios.adapters import LinearDecoder, save_decoder

    tokenizer = aios.Tokenizer.load(default_model / "tokenizer.json")
    texts = ["Hello world", "Why is the sky blue?", "<|im_start|>user\nhi<|im_end|>", "naïve café 東京 🙂"]
    prompt = torch.randn(1, 4, local.config.hidden_size, generator=torch.Generator().manual_seed(3)) * 0.5
    decoder = tmp_path / "decoder"
    save_decoder(LinearDecoder(local.config.hidden_size, 2, span=1), decoder)
    ids = [1, 504, 3458]
    plan = {
        "rounds": rounds,
        "tokenizer_sha256": hashlib.sha256((default_model / "tokenizer.json").read_bytes()).hexdigest(),
        "encode": [(t, tokenizer.encode(t, add_special_tokens=True)) for t in texts],
        "decoded": {t: tokenizer.decode(tokenizer.encode(t, add_special_tokens=True), skip_special_tokens=False)
                    for t in texts},
        "decoder_files": {f.name: base64.b64encode(f.read_bytes()).decode() for f in decoder.iterdir()},
        "prompt": base64.b64encode(tensor(FLOAT32, list(prompt.shape), prompt.numpy().tobytes())).decode(),
        "new_tokens": 4,
        "generated": local.generate(prompt, max_new_tokens=4).ids[0].tolist(),
        "embed_ids": ids,
        "embed_sha256": hashlib.sha256(local.embed(torch.tensor([ids])).numpy().tobytes()).hexdigest(),
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


@pytest.mark.slow
def test_a_soak_of_well_formed_calls_hostile_bytes_and_leaving_callers(default_model, tmp_path):
    import torch

    import aios

    local = aios.Backbone.load(default_model)
    keys = tmp_path / "keys"
    keys.write_text("steady key-steady max_concurrent=64\nraw key-raw\nleaving key-leaving max_concurrent=64\n"
                    f"hostile key-hostile max_tokens={HOSTILE_MAX_TOKENS} max_store_bytes={256 << 20}\n")
    state = tmp_path / "state"
    host = aios.serve(default_model, keys=keys, state=state, unclaimed_ttl=UNCLAIMED_TTL)
    pid = host.pid
    failures, counts, lock = [], {}, threading.Lock()
    report = {}
    try:
        address = host.address
        plan = raw_plan(tmp_path, default_model, local, rounds=1)
        keeper = aios.connect(address, api_key="key-steady", timeout=300)
        probe = torch.randn(1, 4, local.config.hidden_size)

        def idle_host():
            """Past the unclaimed_ttl, a ForwardKeep (which releases unclaimed passes), then idle
            past release_memory_after (2 s)."""
            time.sleep(UNCLAIMED_TTL + 1)
            keeper.release(keeper.forward(probe, keep=True).handle)
            time.sleep(4.0)

        peak = {"rss": 0, "threads": 0, "fds": 0}

        def traffic(seed, malformed, disconnects, deadline_calls, killed, steady_rounds):
            """One round of everything at once: hostile and leaving processes, the raw client and
            the steady threads; what they report goes into counts and failures."""
            per_process = malformed // HOSTILE_PROCESSES + 1
            hostiles = [run_client("hostile", address, "key-hostile", str(seed * 100 + i), str(per_process))
                        for i in range(HOSTILE_PROCESSES)]
            leavers = [run_client("leaver", address, "key-leaving", str(seed * 100 + 50), str(disconnects),
                                  "disconnect"),
                       run_client("leaver", address, "key-leaving", str(seed * 100 + 60), str(deadline_calls), "deadline")]
            held = [run_client("leaver", address, "key-leaving", str(seed * 100 + 70 + i), "0", "hold")
                    for i in range(killed)]
            raw = run_client("raw", address, "key-raw", str(plan))
            steady = [threading.Thread(target=steady_client, args=(address, local, seed * 10 + i, steady_rounds,
                                                                   failures, counts, lock))
                      for i in range(STEADY_CLIENTS)]
            for t in steady:
                t.start()
            # The held callers are killed while their call computes.
            for p in held:
                line = p.stdout.readline()
                if line != "calling\n":
                    failures.append(f"a held caller did not start: {line}{p.stderr.read()[-1000:]}")
                time.sleep(random.uniform(0.05, 0.3))
                p.send_signal(signal.SIGKILL)
                p.wait()
                counts["callers killed mid-call"] = counts.get("callers killed mid-call", 0) + 1
            while any(p.poll() is None for p in hostiles + leavers + [raw]) or any(t.is_alive() for t in steady):
                peak.update(rss=max(peak["rss"], rss(pid)), threads=max(peak["threads"], threads(pid)),
                            fds=max(peak["fds"], fds(pid)))
                time.sleep(0.1)
            for t in steady:
                t.join()
            for p in hostiles:
                out, err = p.communicate()
                if p.returncode != 0:
                    failures.append(f"a hostile client failed: {err[-2000:]}")
                    continue
                r = json.loads(out)
                counts["malformed: seconds of a process"] = max(counts.get("malformed: seconds of a process", 0), r["seconds"])
                for k, v in r["counts"].items():
                    counts[f"malformed: {k}"] = counts.get(f"malformed: {k}", 0) + v
                counts["malformed requests"] = counts.get("malformed requests", 0) + r["sent"]
                if r["unexpected"]:
                    failures.append(f"{len(r['unexpected'])} malformed requests got another code, e.g. "
                                    f"{[u for u in r['unexpected'] if u][:5]}")
            for p in leavers:
                out, err = p.communicate()
                if p.returncode != 0:
                    failures.append(f"a leaving client failed: {err[-2000:]}")
                    continue
                r = json.loads(out)
                for k, v in r["codes"].items():
                    counts[f"left: {k}"] = counts.get(f"left: {k}", 0) + v
            out, err = raw.communicate()
            if raw.returncode != 0:
                failures.append(f"the raw client failed: {err[-2000:]}")
            else:
                r = json.loads(out)
                counts["well-formed calls"] = counts.get("well-formed calls", 0) + r["calls"]
                failures.extend(r["failures"])

        # Warm-up: the same traffic at the same concurrency, smaller (gRPC starts its pollers and
        # timers, compute threads their OpenMP teams and MKL its per-thread buffers), then the
        # baseline of the idle host.
        traffic(0, 600, 10, 10, 1, 8)
        assert not failures, "\n".join(failures[:20])
        idle_host()
        baseline = {"rss": rss(pid), "threads": threads(pid), "fds": fds(pid)}
        baseline_names = thread_names(pid)
        peak.update(baseline)
        counts.clear()

        started = time.monotonic()
        rounds = 0
        while True:
            rounds += 1
            traffic(rounds, MALFORMED, DISCONNECTS - KILLED_PROCESSES, DEADLINE_CALLS, KILLED_PROCESSES, STEADY_ROUNDS)
            if time.monotonic() - started >= SOAK_SECONDS:
                break
        duration = time.monotonic() - started

        # The host still answers, correctly.
        x = torch.randn(2, 5, local.config.hidden_size)
        assert torch.equal(keeper.forward(x).hidden, local.forward(x).hidden)
        assert host._process.poll() is None, "the host exited"

        # Idle: memory given back, connections and threads gone.
        idle_host()
        after = {
            "rss": settle(lambda: rss(pid), baseline["rss"], RSS_TOLERANCE * baseline["rss"], seconds=20),
            "extra threads": settle(lambda: sum(extra_threads(pid, baseline_names).values()), 0, 0, seconds=20),
            "fds": settle(lambda: max(fds(pid), baseline["fds"]), baseline["fds"], 0, seconds=20),
        }
        after.update(threads=threads(pid), fds=fds(pid), thread_names=thread_names(pid))
        baseline["thread_names"] = baseline_names
        report = {"duration_s": round(duration, 1), "rounds": rounds, "counts": dict(sorted(counts.items())),
                  "baseline": baseline, "peak": peak, "after": after}
    finally:
        log = host.stop()
    report["host log bytes"] = host.log_bytes
    print("\nsoak: " + json.dumps(report))
    assert not failures, "\n".join(failures[:20]) + f"\n{report}\nhost log:\n{log[-3000:]}"
    assert counts.get("malformed requests", 0) >= MALFORMED, report
    assert counts.get("left: -1", 0) + counts.get("callers killed mid-call", 0) >= DISCONNECTS, report
    assert counts.get("left: 4", 0) > 0, report  # some deadlines expired while the host computed
    assert abs(after["rss"] - baseline["rss"]) <= RSS_TOLERANCE * baseline["rss"], report
    assert after["extra threads"] == 0 and after["fds"] <= baseline["fds"], report
    # Nothing a caller sends writes to the host's log (protobuf's complaints about each string of
    # invalid UTF-8 did, 7 KB per 400 malformed requests).
    assert host.log_bytes < 4096, log[-3000:]
