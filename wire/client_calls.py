#!/usr/bin/env python3
"""The clients' backbone calls, generated from the annotations of the wire contract.

A backbone-level unary rpc of aios.proto carries, in the comment above it, the C++ call both
clients (RemoteBackbone and the thin aios::client::Client) make of it:

    // aios: Latents embed(const Ids& ids, const Extension* extension = nullptr) -> latents
    rpc Embed(EmbedRequest) returns (Tensor);

Each parameter is written into the request field of its name, or into the request itself when it
names a oneof (a loss spread over its alternatives). The reply becomes the return type:
"-> name" reads the reply's field of that name, or else names the reply in errors. A call
declared const is const in every client, and an rpc may carry several calls (each reading one
field of its reply, say). The capitalised names are a small vocabulary that each client maps to
its own C++ types in a .types file:

    qualifier: const           # after each declaration: "override", "const", ...
    Latents: FloatTensor<3>
    Extension: -               # not offered here: parameters of it are left out (they need a default)

and converts, once per type rather than once per call: in the scope of the generated code,
`outgoing()` returns a writer of one request with
    write(value, make, field)     make() returns the field's message (called only when the value
                                  is present), or make(v) sets a scalar field
    write(value, request, field)  the value spread over the request itself
    call(method, request, &reply)
    read<T>(reply, field)         the reply (or a field of it) as the call's return type
So a call whose types a client knows needs no code in that client; a name a client does not know
fails the build here, naming that client's .types file.

Two outputs: `declare`, the declarations (with the rpc's other comments as their documentation)
that a public header includes in its class (both clients', and LocalBackbone's, which implements
the same interface as RemoteBackbone and shares its types), and `define`, a client's definitions,
out of the class named by --class, that its source includes.
"""

import argparse
import pathlib
import re
import sys

SCALARS = {"double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64",
           "sfixed32", "sfixed64", "bool", "string", "bytes"}


class ContractError(Exception):
    pass


def parse_contract(text):
    """Messages (name -> {field: (type, repeated)}), their oneofs (name -> set), enums, and annotated rpcs."""
    messages, oneofs, enums, rpcs = {}, {}, set(), []
    stack = []  # the open blocks: (kind, name)
    comments = []  # the comment lines just above the statement being read
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("//"):
            comments.append(line[2:].strip())
            continue
        code = line.split("//", 1)[0]
        # Statements end at ";", "{" and "}" (a message may sit on one line).
        for statement in re.findall(r"[^;{}]*[;{}]", code):
            body = statement[:-1].strip()
            if statement.endswith("}"):
                if stack:
                    stack.pop()
                continue
            if statement.endswith("{"):
                m = re.fullmatch(r"(\w+)\s*(\w*)", body)
                kind, name = m.groups() if m else ("other", "")
                if kind == "message":
                    messages[name], oneofs[name] = {}, set()
                elif kind == "enum":
                    enums.add(name)
                elif kind == "oneof" and stack and stack[-1][0] == "message":
                    oneofs[stack[-1][1]].add(name)
                stack.append((kind, name))
                continue
            if body.startswith("rpc ") and stack and stack[-1][0] == "service":
                read_rpc(body, stack[-1][1], comments, number, rpcs)
                comments = []
            elif stack and stack[-1][0] in ("message", "oneof"):
                m = re.fullmatch(r"(optional\s+|repeated\s+)?([\w.]+)\s+(\w+)\s*=\s*\d+.*", body)
                if m:
                    message = next(name for kind, name in reversed(stack) if kind == "message")
                    messages[message][m.group(3)] = (m.group(2), (m.group(1) or "").strip() == "repeated")
        if code.strip() or not line:
            if any(c.startswith("aios:") for c in comments):
                raise ContractError(f"line {number}: an 'aios:' comment must stand right above an rpc on one line, "
                                    f"not above {code.strip() or 'a blank line'!r}")
            comments = []
    return messages, oneofs, enums, rpcs


def read_rpc(body, service, comments, number, rpcs):
    m = re.fullmatch(r"rpc\s+(\w+)\s*\(\s*(stream\s+)?(\w+)\s*\)\s*returns\s*\(\s*(stream\s+)?(\w+)\s*\)", body)
    if not m:
        raise ContractError(f"line {number}: cannot read the rpc {body!r}")
    annotations = [c[len("aios:"):].strip() for c in comments if c.startswith("aios:")]
    if annotations and (m.group(2) or m.group(4)):
        raise ContractError(f"line {number}: only unary rpcs are generated for the clients")
    docs = [c for c in comments if not c.startswith("aios:")]
    for annotation in annotations:
        rpcs.append({"service": service, "name": m.group(1), "request": m.group(3), "reply": m.group(5),
                     "annotation": annotation, "docs": docs, "line": number})


def split_params(text):
    params, depth, current = [], 0, ""
    for c in text:
        if c in "<({":
            depth += 1
        elif c in ">)}":
            depth -= 1
        if c == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += c
    if current.strip():
        params.append(current.strip())
    return params


def parse_annotation(rpc):
    m = re.fullmatch(r"(.+?)\s+(\w+)\s*\((.*)\)\s*(const)?\s*(?:->\s*(\w+))?", rpc["annotation"])
    if not m:
        raise ContractError(f"line {rpc['line']}: expected 'aios: Type name(params) [const] [-> reply]', "
                            f"got {rpc['annotation']!r}")
    result, name, params, const, reply = m.groups()
    parsed = []
    for p in split_params(params):
        declaration, _, default = p.partition("=")
        pm = re.fullmatch(r"(.+?)\s*\b(\w+)", declaration.strip())
        if not pm:
            raise ContractError(f"line {rpc['line']}: cannot read the parameter {p!r}")
        parsed.append({"type": pm.group(1).strip(), "name": pm.group(2), "default": default.strip() or None})
    return {"result": result.strip(), "name": name, "params": parsed, "const": bool(const), "reply": reply}


def read_types(path):
    types, qualifier = {}, ""
    for number, raw in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\w+)\s*:\s*(\S.*)", line)
        if not m:
            raise ContractError(f"{path}:{number}: expected 'Name: C++ type'")
        if m.group(1) == "qualifier":
            qualifier = m.group(2)
        else:
            types[m.group(1)] = m.group(2)
    return types, qualifier


def map_type(text, types, where, types_path):
    """The client's spelling of an annotation type; None when the client has no such type."""
    absent = False

    def replace(m):
        nonlocal absent
        word = m.group(0)
        if word not in types:
            raise ContractError(f"{where}: {types_path} gives no C++ type for {word!r}")
        if types[word] == "-":
            absent = True
        return types[word]

    mapped = re.sub(r"\b[A-Z]\w*\b", replace, text)
    return None if absent else mapped


def generate(contract, types_path, mode, class_name):
    messages, oneofs, enums, rpcs = parse_contract(pathlib.Path(contract).read_text())
    types, qualifier = read_types(types_path)
    out = [f"// Generated by wire/client_calls.py from {pathlib.Path(contract).name} and "
           f"{pathlib.Path(types_path).name}; do not edit."]
    documented = set()
    for rpc in rpcs:
        call = parse_annotation(rpc)
        where = f"{pathlib.Path(contract).name}:{rpc['line']} ({rpc['service']}.{rpc['name']})"
        if rpc["request"] not in messages or rpc["reply"] not in messages:
            raise ContractError(f"{where}: unknown request or reply message")
        fields = messages[rpc["request"]]
        result = map_type(call["result"], types, where, types_path)
        if result is None:
            continue  # the client does not offer the call
        params = []
        for p in call["params"]:
            mapped = map_type(p["type"], types, where, types_path)
            if mapped is None:
                if p["default"] is None:
                    raise ContractError(f"{where}: {p['name']} has no default, so it cannot be left out")
                continue
            params.append((mapped, p))
        declared = ", ".join(f"{t} {p['name']}" + (f" = {p['default']}" if p["default"] else "") for t, p in params)
        defined = ", ".join(f"{t} {p['name']}" for t, p in params)
        const = call["const"] or re.search(r"\bconst\b", qualifier)
        suffix = " ".join(["" if re.search(r"\bconst\b", qualifier) or not const else "const", qualifier]).strip()
        out.append("")
        if mode == "declare":
            if rpc["line"] not in documented:  # an rpc's comments document the first of its calls
                out += [f"// {line}".rstrip() for line in rpc["docs"]]
                documented.add(rpc["line"])
            out.append(f"{result} {call['name']}({declared}){' ' + suffix if suffix else ''};")
            continue
        out.append(f"{result} {class_name}::{call['name']}({defined}){' const' if const else ''} {{")
        body = [f"::aios::v1::{rpc['request']} request;", "auto out = outgoing();"]
        for _, p in params:
            name = p["name"]
            if name not in fields:
                if name not in oneofs[rpc["request"]]:
                    raise ContractError(f"{where}: {rpc['request']} has no field or oneof {name!r}")
                body.append(f'out.write({name}, request, "{name}");')
                continue
            kind, repeated = fields[name]
            if repeated:
                raise ContractError(f"{where}: {name} is a repeated field; give it a message of its own")
            if kind in SCALARS or kind in enums:
                body.append(f'out.write({name}, [&](auto value) {{ request.set_{name}(value); }}, "{name}");')
            else:
                body.append(f'out.write({name}, [&] {{ return request.mutable_{name}(); }}, "{name}");')
        path = f"/aios.v1.{rpc['service']}/{rpc['name']}"
        body.append(f"::aios::v1::{rpc['reply']} reply;")
        body.append(f'out.call("{path}", request, &reply);')
        if result != "void":
            # "-> name": the reply's field of that name, or the reply itself (named so in errors).
            reply = call["reply"] or "reply"
            value = f"reply.{reply}()" if reply in messages[rpc["reply"]] else "reply"
            body.append(f'return out.read<{result}>({value}, "{reply}");')
        out += [f"  {line}" for line in body]
        out.append("}")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contract")
    parser.add_argument("types")
    parser.add_argument("output")
    parser.add_argument("--mode", choices=["declare", "define"], required=True)
    parser.add_argument("--class", dest="class_name", default="")
    args = parser.parse_args()
    try:
        text = generate(args.contract, args.types, args.mode, args.class_name)
    except ContractError as e:
        sys.exit(f"client_calls.py: {e}")
    output = pathlib.Path(args.output)
    # Rewritten only when it changes, so that what includes it is not rebuilt for nothing.
    if not output.exists() or output.read_text() != text:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)


if __name__ == "__main__":
    main()
