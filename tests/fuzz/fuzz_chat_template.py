#!/usr/bin/env python3
"""Fuzzes aios.apply_chat_template, the Jinja sandbox for chat templates from model files (atheris).

    .venv/bin/python tests/fuzz/fuzz_chat_template.py -atheris_runs=N [libFuzzer flags] CORPUS_DIR
    .venv/bin/python tests/fuzz/fuzz_chat_template.py --replay PATH ...   # files or directories, no atheris

The input's first byte picks how the rest is read:
  * even: structure-aware. The bytes choose among Jinja statements (if, for, set, namespace attributes,
    macros and caller, filter and set blocks, break, generation), expressions (literals, the template's
    names and globals, attributes, the safe ones and the internals a template must not reach, items, slices,
    operators, every filter and test, method calls, str.format and % formats), literals with small and huge
    numbers, then the messages (roles, contents, tool calls, None values, reasoning).
  * odd: raw. The template's text, then 0xFF, then messages separated by 0xFE, each role 0xFD content (the
    layout of the C++ fuzz_chat_template's corpus, so real templates seed it).
Each input renders with max_output_chars=MAX_OUTPUT and timeout_s=TIMEOUT, and must either return a str within
the output bound or raise aios.text.ChatTemplateError, within the deadline (plus MARGIN), with the process
growing by less than MAX_RSS_GROWTH; the error's cause must be an error of the template (Jinja's, or Python's
about the template's values), never one raised by the sandbox's own code, an OSError (a file touched), a
MemoryError or a SystemError. Anything else escapes and is a finding.

The seeds are in tests/fuzz/corpus/fuzz_chat_template_py/; tests/python/test_chat_sandbox.py replays them.
"""
import json
import warnings
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_OUTPUT = 1 << 16
TIMEOUT = 0.5
MARGIN = 2.0  # the machine may be loaded; an overshoot beyond this is the sandbox's fault
MAX_RSS_GROWTH = 1 << 30  # bytes over the peak before the first input

STATEMENT_DEPTH, EXPRESSION_DEPTH = 4, 5


class Choices:
    """Reads the fuzzer's bytes as choices; past the end every read is 0, so every input is a template."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def byte(self):
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n):
        if n <= 1:
            return 0
        value = self.byte() if n <= 256 else self.byte() << 8 | self.byte()
        return value % n

    def pick(self, options):
        return options[self.below(len(options))]

    def text(self, longest):
        n = self.below(longest + 1)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk.decode("utf-8", "replace")


# Names a template has (PRELUDE defines m, x, y and ns), then names it must not have: picked 1 time in 8, so
# that most inputs get past the first undefined name.
NAMES = ["messages", "m", "x", "y", "ns", "ns.a", "ns.x", "add_generation_prompt", "bos_token", "tools",
         "range", "lipsum", "cycler", "joiner", "namespace", "dict", "strftime_now", "self"]
HOSTILE_NAMES = ["loop", "message", "caller", "varargs", "kwargs", "raise_exception", "documents", "nothing",
                 "open", "__import__", "os", "config"]
PRELUDE = ("{%- set ns = namespace(a=0, x=[], y='') -%}{%- set m = messages[0] if messages else {} -%}"
           "{%- set x = messages -%}{%- set y = 'abc' -%}")
ATTRS = ["role", "content", "tool_calls", "function", "name", "arguments", "x", "y", "items", "keys", "values",
         "get", "upper", "lower", "split", "strip", "lstrip", "title", "startswith", "endswith", "format",
         "format_map", "join", "replace", "center", "ljust", "rjust", "zfill", "expandtabs", "to_bytes",
         "translate", "encode", "decode", "count", "index", "copy", "fromkeys", "bit_length", "splitlines",
         "append", "pop", "update", "clear", "first", "last", "length", "cycle", "index0", "revindex", "previtem",
         "changed", "depth", "next", "current", "reset", "__class__", "__mro__", "__subclasses__", "__globals__",
         "__init__", "__dict__", "__builtins__", "_TemplateReference__context", "_Namespace__attrs", "mro",
         "gi_frame", "gi_code", "func_globals", "__self__", "__func__"]
FILTERS = ["abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
           "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent", "int", "items", "join",
           "last", "length", "list", "lower", "map", "max", "min", "pprint", "random", "reject", "rejectattr",
           "replace", "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string", "striptags",
           "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode", "urlize", "wordcount",
           "wordwrap", "xmlattr"]
TESTS = ["boolean", "callable", "defined", "divisibleby", "eq", "escaped", "even", "false", "filter", "float",
         "ge", "gt", "in", "integer", "iterable", "le", "lower", "lt", "mapping", "ne", "none", "number", "odd",
         "sameas", "sequence", "string", "test", "true", "undefined", "upper"]
STRINGS = ["", "a", "xy", "abc ", " a b ", "{}", "{:>8}", "{:{}}", "{0}", "{0.__class__}", "{0[role]}", "{a}",
           "%s", "%5d", "%(a)s", "%*s", "%.3f", "%r", "<a>b</a>", "<>", "\n", "\t", "<|im_start|>", "<|im_end|>",
           "user", "assistant", "system", "tool", "</think>", "http://a.com b@c.org", "role", "content", "x", "\\"]
INTS = [0, 1, 2, 3, -1, 5, 8, 10, 100, 1000, 4096, 99999, 100000, 10 ** 6, 10 ** 9, 2 ** 63]
BINOPS = ["+", "-", "*", "/", "//", "%", "**", "~", "and", "or", "==", "!=", "<", ">=", "in", "not in"]


class Template:
    """A template built from choices: statements of expressions, a bounded number of nodes in all."""

    def __init__(self, choices):
        self.c, self.nodes, self.in_loop, self.macros = choices, 0, 0, []

    def name(self):
        c = self.c
        if c.below(8) == 0:
            return c.pick(HOSTILE_NAMES + ["loop.index", "loop.cycle", "caller()"] if self.in_loop else HOSTILE_NAMES)
        return c.pick(NAMES + self.macros) if self.macros and c.below(3) == 0 else c.pick(NAMES)

    def string(self):
        c = self.c
        value = c.pick(STRINGS) if c.below(4) else c.text(12)
        return repr(value)

    def literal(self):
        c = self.c
        kind = c.below(9)
        if kind <= 2:
            return str(c.pick(INTS))
        if kind <= 5:
            return self.string()
        return c.pick(["none", "true", "false", "[]", "{}", "()", "1.5", "-0.0", "1e308"])

    def expression(self, depth=0):
        c = self.c
        self.nodes += 1
        if depth >= EXPRESSION_DEPTH or self.nodes > 80:
            return self.literal() if c.below(2) else self.name()
        e = lambda: self.expression(depth + 1)  # noqa: E731
        kind = c.below(18)
        if kind == 0:
            return self.literal()
        if kind == 1:
            return self.name()
        if kind == 2:
            return "[" + ", ".join(e() for _ in range(c.below(4))) + "]"
        if kind == 3:
            return "{" + ", ".join(f"{self.string()}: {e()}" for _ in range(c.below(3))) + "}"
        if kind == 4:
            return f"({e()}, {e()})"
        if kind == 5:
            return f"{e()}.{c.pick(ATTRS)}"
        if kind == 6:
            return f"{e()}[{e()}]"
        if kind == 7:
            return f"{e()}[{c.pick(['', '1', '-1', e()])}:{c.pick(['', '2', e()])}]"
        if kind in (8, 9):
            return f"({e()} {c.pick(BINOPS)} {e()})"
        if kind == 10:
            return f"({c.pick(['not ', 'not ', '-'])}{e()})"
        if kind in (11, 12):
            args = ", ".join(e() for _ in range(c.below(3)))
            return f"({e()}|{c.pick(FILTERS)}" + (f"({args}))" if args else ")")
        if kind == 13:
            args = f"({e()})" if c.below(2) else ""
            return f"({e()} is {c.pick(['', 'not '])}{c.pick(TESTS)}{args})"
        if kind == 14:
            args = [e() for _ in range(c.below(4))]
            if c.below(3) == 0:
                args.append(f"{c.pick(['width', 'indent', 'n', 'x', 'fill_with', 'start', 'separators'])}={e()}")
            return f"{e()}({', '.join(args)})"
        if kind == 15:
            return f"{e()}.{c.pick(ATTRS)}({', '.join(e() for _ in range(c.below(3)))})"
        if kind == 16:
            return f"({e()} if {e()} else {e()})"
        return f"({self.string()} % ({e()}, {e()}))" if c.below(2) else f"{self.string()}.format({e()}, {e()})"

    def statements(self, depth=0):
        return "".join(self.statement(depth) for _ in range(1 + self.c.below(4)))

    def statement(self, depth):
        c = self.c
        self.nodes += 1
        if depth >= STATEMENT_DEPTH or self.nodes > 80:
            return "{{ " + self.expression(EXPRESSION_DEPTH - 1) + " }}"
        kind = c.below(15)
        body = lambda: self.statements(depth + 1)  # noqa: E731
        dash = c.pick(["", "-"])
        if kind <= 2:
            return "{{" + dash + " " + self.expression() + " }}"
        if kind == 3:
            return c.text(16).replace("{", "(")
        if kind == 4:
            other = "{% else %}" + body() if c.below(2) else ""
            return f"{{%{dash} if {self.expression()} %}}{body()}{other}{{% endif %}}"
        if kind == 5:
            self.in_loop += 1
            target = c.pick(["x", "m", "message", "x, y"])
            recursive = " recursive" if c.below(6) == 0 else ""
            inner = body() + ("{{ loop(" + self.expression() + ") }}" if recursive else "")
            self.in_loop -= 1
            return f"{{% for {target} in {self.expression()}{recursive} %}}{inner}{{% endfor %}}"
        if kind == 6:
            return f"{{% set {c.pick(['x', 'y', 'm', 'messages'])} = {self.expression()} %}}"
        if kind == 7:
            return f"{{% set ns = namespace({c.pick(['a=1, x=[], y=0', 'a=ns.a, x=[ns], y=ns', '_x=1'])}) %}}"
        if kind == 8:
            return f"{{% set ns.{c.pick(['a', 'x', 'y', 'a', 'x', 'y', '_b', '__class__'])} = {self.expression()} %}}"
        if kind == 9:
            name = f"mac{len(self.macros)}"
            self.macros.append(name)
            return f"{{% macro {name}(a, b=1) %}}{body()}{{% endmacro %}}"
        if kind == 10:
            return f"{{% filter {c.pick(FILTERS)} %}}{body()}{{% endfilter %}}"
        if kind == 11:
            return f"{{% set {c.pick(['x', 'y'])} %}}{body()}{{% endset %}}"
        if kind == 12 and self.in_loop:
            return c.pick(["{% break %}", "{% continue %}"])
        if kind == 12:
            return f"{{% generation %}}{body()}{{% endgeneration %}}"
        if kind == 13 and self.macros:
            return f"{{% call(a) {c.pick(self.macros)}({self.expression()}) %}}{body()}{{{{ a }}}}{{% endcall %}}"
        return c.pick(["{{ caller() }}", "{% include 'x' %}", "{% import 'os' as os %}", "{% extends 'x' %}",
                       "{% raw %}{{ x }}{% endraw %}", "{# c #}", "{{ self.b() }}", "{% block b %}b{% endblock %}",
                       "{{ super() }}"])


ROLES = ["system", "user", "assistant", "tool", "ipython", "developer"]


def structured(choices):
    template = PRELUDE + Template(choices).statements()
    messages = []
    for _ in range(choices.below(6)):
        message = {"role": choices.pick(ROLES) if choices.below(5) else choices.text(8)}
        kind = choices.below(6)
        if kind == 0:
            message["content"] = [{"type": "text", "text": choices.text(16)}, {"type": "image"}]
        elif kind == 1:
            message["content"] = None
        else:
            message["content"] = choices.text(40)
        if choices.below(4) == 0:
            message["tool_calls"] = [{"type": "function", "function": {"name": choices.text(6),
                                                                      "arguments": {"a": choices.below(9)}}}]
        if choices.below(5) == 0:
            message[choices.pick(["reasoning_content", "thinking", "reasoning"])] = choices.text(12)
        messages.append(message)
    extra = {"bos_token": "<s>", "eos_token": "</s>"} if choices.below(2) else {}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}] \
        if choices.below(3) == 0 else None
    return template, messages, bool(choices.below(2)), tools, extra


def raw(data):
    template, _, rest = data.partition(b"\xff")
    messages = []
    if rest:
        for part in rest.split(b"\xfe"):
            role, _, content = part.partition(b"\xfd")
            messages.append({"role": role.decode("utf-8", "replace"), "content": content.decode("utf-8", "replace")})
    return template.decode("utf-8", "replace"), messages, True, None, {"bos_token": "<s>", "eos_token": "</s>"}


def decode(data):
    if data and data[0] & 1:
        return raw(data[1:])
    return structured(Choices(data[1:]))


class Finding(AssertionError):
    pass


_BASELINE_RSS = None
_UNEXPECTED = (MemoryError, SystemError, OSError, AssertionError, NameError, ImportError)
# What the sandbox raises on purpose, as (exception, function): refusing an attribute, a namespace name, and
# str.format_map's argument checks (Jinja's, kept).
_DELIBERATE = {("SecurityError", "unsafe_undefined"), ("SecurityError", "check_name"), ("TypeError", "wrapper")}
# The sandbox's functions that perform the template's own operation ('x' + 1 in call_binop, a filter in bounded,
# str() of a part in aios_concat, ...): what that operation raises is the template's error. An error raised in
# any other of its functions (the checks made before an operation, the walks measuring values) is a finding.
_PERFORMS = {"call_binop", "call", "bounded", "aios_concat", "concat", "wrapper", "format_field", "vformat",
             "__repr__", "__init__", "__setitem__", "_generation", "run"}


def check(data):
    """Renders one input and raises Finding if the sandbox did not hold."""
    import aios
    from aios.text import ChatTemplateError

    global _BASELINE_RSS
    if _BASELINE_RSS is None:
        _BASELINE_RSS = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    template, messages, prompt, tools, extra = decode(data)
    start = time.monotonic()
    try:
        out = aios.apply_chat_template(template, messages, prompt, tools=tools, max_output_chars=MAX_OUTPUT,
                                       timeout_s=TIMEOUT, **extra)
        if not isinstance(out, str) or len(out) > MAX_OUTPUT:
            raise Finding(f"rendered {type(out).__name__} of {len(out)} characters, over {MAX_OUTPUT}")
    except ChatTemplateError as e:
        cause = e.__cause__
        if cause is not None:
            if isinstance(cause, _UNEXPECTED):
                raise Finding(f"unexpected cause {type(cause).__name__}: {cause}") from e
            tb = cause.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None and tb.tb_frame.f_code.co_filename == aios.text.__file__ and \
                    tb.tb_frame.f_code.co_name not in _PERFORMS and \
                    (type(cause).__name__, tb.tb_frame.f_code.co_name) not in _DELIBERATE:
                raise Finding(f"the sandbox's own code raised {type(cause).__name__}: {cause}") from e
    elapsed = time.monotonic() - start
    if elapsed > TIMEOUT + MARGIN:
        raise Finding(f"took {elapsed:.2f} s with timeout_s={TIMEOUT}")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - _BASELINE_RSS
    if grown > MAX_RSS_GROWTH:
        raise Finding(f"the process grew by {grown >> 20} MiB")


def inputs(paths):
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file())
        else:
            yield path


def replay(paths, verbose=False):
    """Checks every input file under paths; returns how many there were. Raises Finding (naming the file)."""
    n = 0
    for path in inputs(paths):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)  # see main()
                check(path.read_bytes())
        except Finding as e:
            raise Finding(f"{path}: {e}") from e
        n += 1
        if verbose:
            print(f"ok {path}")
    return n


def show(data):
    template, messages, prompt, tools, extra = decode(data)
    print(json.dumps({"template": template, "messages": messages, "add_generation_prompt": prompt,
                      "tools": tools, **extra}, indent=1, ensure_ascii=False))


def main():
    # Python warns about odd code that random templates compile to ('None'[0]): noise, not findings.
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    if len(sys.argv) > 1 and sys.argv[1] in ("--replay", "--show"):
        if sys.argv[1] == "--show":
            for path in inputs(sys.argv[2:]):
                show(path.read_bytes())
            return 0
        print(f"{replay(sys.argv[2:], verbose=True)} inputs held")
        return 0
    import atheris

    # Coverage of the sandbox and of Jinja guides the mutations.
    # (Jinja's lexer, parser and compiler are left out: instrumented, they halve the executions per second.)
    with atheris.instrument_imports(include=["aios.text", "jinja2.sandbox", "jinja2.runtime", "jinja2.filters",
                                             "jinja2.tests", "jinja2.utils", "markupsafe"]):
        import jinja2.ext  # noqa: F401
        import jinja2.sandbox  # noqa: F401
        import aios.text  # noqa: F401
    aios.text._sandbox()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
