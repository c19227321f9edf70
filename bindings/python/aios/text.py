"""Text in, text out: prompts through the model's tokenizer and chat template, replies streamed.

    backbone.generate_text("Why is the sky blue?", chat=True)          # -> str
    for piece in backbone.stream_text("Once upon a time", max_new_tokens=50):
        print(piece, end="", flush=True)

Both stop at the tokenizer's end-of-turn tokens (<|im_end|>, <|endoftext|>, </s>, ...) and take
the sampling arguments of Backbone.generate (temperature, top_k, top_p, seed, max_new_tokens).

Chat templates come from model files (tokenizer_config.json, GGUF metadata), so they are untrusted code:
apply_chat_template renders them in a sandbox that bounds what they may reach, how long they may run and
how much they may build (see its docstring and docs/generation.md).

The sandbox is one file on purpose: it tells its own frames from a template's by this file's name
(_HERE), so its budget, walkers and environment stay together here (about 1,000 lines).
"""
import dataclasses
import functools
import json
import re
import sys
import threading
import time
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from datetime import datetime

import torch

from ._aios import end_of_turn_ids
from .errors import InvalidArgumentError

MAX_OUTPUT_CHARS = 1 << 20
TIMEOUT_S = 2.0
# Templates are a few KiB (the longest on the Hub some tens); compiling a huge one costs memory before the
# deadline can stop it.
MAX_TEMPLATE_CHARS = 1 << 18
# All a render builds together (strings, list items, counted as in _cost) may reach this many times the output
# bound: real templates build a few times their output, and values kept alive cannot add up past it.
BUDGET_FACTOR = 16
# Integers a template computes stay under this many bits (their text under 1234 digits), and lists and dicts
# nest at most this deep (JSON schemas of tools nest some levels; repr and json recurse in C).
MAX_INT_BITS = 4096
MAX_DEPTH = 100
# Estimates made before an operation are upper bounds, loose by up to this factor: an operation is refused
# beforehand only when even the estimate divided by it is over the bound; its result is then held to the bound.
_SLACK = 16
_HERE = __file__


class ChatTemplateError(InvalidArgumentError):
    """A chat template did not render: a Jinja syntax or runtime error, an error the template raised
    (raise_exception), an attribute or call the sandbox refuses (the cause is then jinja2's SecurityError), or a
    bound passed (time, output, or the size of something it builds). The message says which; __cause__ holds the
    underlying exception where there is one."""
    field = "chat_template"


class _Refused(BaseException):
    # A BaseException, so that no `except Exception` in Jinja or a filter can swallow it and render on.
    pass


_local = threading.local()


def _current():
    render = getattr(_local, "render", None)
    if render is None:  # the sandbox's functions are only reachable from a template being rendered
        raise RuntimeError("aios chat template sandbox used outside apply_chat_template")
    return render


class _Render:
    """The bounds of one render and what it has used of them (one per apply_chat_template call, per thread)."""

    def __init__(self, limit, timeout):
        self.limit = limit
        self.budget = BUDGET_FACTOR * limit
        self.used = 0
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.entry = None
        # The last containers measured, by id, with the container itself (kept alive, so its id stays its own):
        # `ns.l = ns.l + [m]` in a loop then measures ns.l once, not at every step. Namespaces change, so
        # containers holding one are not kept.
        self.recent = {}
        deadline, monotonic = self.deadline, time.monotonic

        # sys.settrace calls `tracer` for each Python frame the render enters and `local` for each line those
        # frames run, so that even a loop that calls nothing ({% for %} in {% for %}, or a filter's own loop such
        # as markupsafe's striptags) meets the deadline. The sandbox's own frames (this file) are not traced line
        # by line: their loops are bounded by `limit`. Overhead, measured on SmolLM2's template (best of 10 to 15,
        # on a loaded 2-core EPYC): a 201-message chat (21.7K characters out) renders in 0.9 ms in jinja's plain
        # sandbox, 1.3-1.9 ms with these bounds untraced, 8.5-10 ms traced (5.5-6 ms of it for the call events
        # alone: a Python call to the tracer per frame); a 1-message chat in 0.02, 0.05 and 0.2 ms. Compiling
        # (once per template, then kept) takes ~2 ms, 4-8 ms traced.
        def local(frame, event, arg):
            if monotonic() > deadline:
                raise _Refused(self.late())
            return local

        def tracer(frame, event, arg):
            if monotonic() > deadline:
                raise _Refused(self.late())
            return None if frame.f_code.co_filename == _HERE else local

        self.tracer, self.local = tracer, local

    def late(self):
        return f"rendering took longer than timeout_s={self.timeout:g}"

    def tick(self):
        # Checked by every filter, test, call and operator too: the tracer is disabled once it raises (and by
        # Python at the recursion limit), so it must not be the only guard.
        if time.monotonic() > self.deadline:
            raise _Refused(self.late())
        if sys.gettrace() is not self.tracer:
            self.rearm()

    def rearm(self):
        sys.settrace(self.tracer)
        frames, frame = [], sys._getframe(2)
        while frame is not None and frame is not self.entry:
            frames.append(frame)
            frame = frame.f_back
        if frame is not None:  # only the render's own frames, never the caller's
            for frame in frames:
                if frame.f_code.co_filename != _HERE:
                    frame.f_trace = self.local

    def size(self, n, what="a value"):
        if n > self.limit:
            raise _Refused(f"{what} of {n} characters or items would pass max_output_chars={self.limit}")

    def estimate(self, n, what):
        if n > _SLACK * self.limit:
            raise _Refused(f"{what} would build about {n} characters, past max_output_chars={self.limit}")

    def depth(self, n):
        if n > MAX_DEPTH:
            raise _Refused(f"a value nested more than {MAX_DEPTH} deep")

    def bits(self, n):
        if n > MAX_INT_BITS:
            raise _Refused(f"an integer of about {n} bits would pass the {MAX_INT_BITS}-bit bound")

    def charge(self, n):
        self.used += n
        if self.used > self.budget:
            raise _Refused(f"the template built more than {self.budget} characters and items in all "
                           f"({BUDGET_FACTOR} x max_output_chars)")

    def measure(self, value):
        """(cost, depth, mutable) of a container, from _walk, or from the last ones measured."""
        seen = self.recent.get(id(value))
        if seen is not None and seen[0] is value:
            return seen[1], seen[2], False
        cost, depth, mutable = _walk(value, self.limit, {k: (c, d) for k, (_, c, d) in self.recent.items()})
        if not mutable:
            self.remember(value, cost, depth)
        return cost, depth, mutable

    def remember(self, value, cost, depth):
        if cost <= self.limit and depth <= MAX_DEPTH:
            self.recent.pop(id(value), None)
            self.recent[id(value)] = (value, cost, depth)
            if len(self.recent) > 4:
                del self.recent[next(iter(self.recent))]

    def checked(self, result, args=(), kwargs=None, shallow=False):
        """Holds a value the template just built to the bounds, and charges it to the budget; a value handed
        back unchanged (`x|default(y)` is x or y) costs nothing. A container is charged its items only when
        `shallow` (a display [a, b] or a + b builds a list of what exists), else all it holds (a filter or
        method may have built its strings too)."""
        for source in args:
            if result is source:
                return result
        if kwargs:
            for source in kwargs.values():
                if result is source:
                    return result
        kind = type(result)
        if kind is int:
            self.bits(result.bit_length())
            return result
        if kind is bool or kind is float or result is None:
            return result
        if isinstance(result, (str, bytes, bytearray)):
            n = charge = len(result)
        elif isinstance(result, _CONTAINERS) or isinstance(result, _namespace_type()):
            n, depth, _ = self.measure(result)
            self.depth(depth)
            charge = len(result) if shallow and hasattr(result, "__len__") else n
        else:
            return result
        self.size(n)
        self.charge(charge)
        return result

    def run(self, env, template, variables):
        previous_render, previous_tracer = getattr(_local, "render", None), sys.gettrace()
        _local.render, self.entry = self, sys._getframe()
        chunks, error, cause = None, None, None
        sys.settrace(self.tracer)
        try:
            chunks = _compiled(env, template, self).generate(variables)
            out, n = [], 0
            for chunk in chunks:
                if not isinstance(chunk, str):  # {% filter unique %} yields a generator: jinja's join refuses it
                    "".join((chunk,))
                n += len(chunk)
                if n > self.limit:
                    raise _Refused(f"the output passed max_output_chars={self.limit}")
                out.append(chunk)
            return "".join(out)
        except _Refused as e:
            error = ChatTemplateError(f"chat template: {e}")
        except ChatTemplateError:
            raise
        except Exception as e:  # noqa: BLE001  (anything a template makes Jinja or Python raise is its error)
            error, cause = ChatTemplateError(f"chat template: {_describe(e)}"), e
        finally:
            sys.settrace(previous_tracer)  # first: past the deadline, the tracer would raise in close() too
            try:
                if chunks is not None:
                    chunks.close()
            except Exception:  # noqa: BLE001  (a generator that fails to close has failed already)
                pass
            finally:
                _local.render = previous_render
        raise error from cause


# Compiled templates, by (source, max_output_chars): a model's template is compiled once, not for every prompt
# (compiling under the tracer costs some ms). Only small ones, whose compile-time constants are small, are kept.
_COMPILED, _COMPILED_LOCK, _COMPILED_KEPT, _COMPILED_CHARS = {}, threading.Lock(), 8, 1 << 16


def _compiled(env, template, render):
    key = (template, render.limit)
    with _COMPILED_LOCK:
        compiled = _COMPILED.pop(key, None)
        if compiled is not None:
            _COMPILED[key] = compiled  # most recently used last
            return compiled
    used = render.used
    compiled = env.from_string(template)  # Jinja folds constant filters ('x'|center(9)) here: they are charged
    if len(template) <= _COMPILED_CHARS and render.used - used <= _COMPILED_CHARS:
        with _COMPILED_LOCK:
            _COMPILED[key] = compiled
            while len(_COMPILED) > _COMPILED_KEPT:
                del _COMPILED[next(iter(_COMPILED))]
    return compiled


def _describe(e):
    text = f"{type(e).__name__}: {e}"
    line = getattr(e, "lineno", None)
    tb = e.__traceback__
    while tb is not None:  # the innermost template line of a runtime error
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{text} (line {line})" if line else text


# -- sizes ------------------------------------------------------------------------------------------------------

_CONTAINERS = (list, tuple, dict, set, frozenset, KeysView, ValuesView, ItemsView)


@functools.lru_cache(maxsize=None)
def _namespace_type():
    import jinja2.utils
    return jinja2.utils.Namespace


def _children(v, namespace):
    """The parts of a container, or None for a value that is not one."""
    kind = type(v)
    if kind is list or kind is tuple:
        return v
    if kind is dict or isinstance(v, Mapping):
        return [*v.keys(), *v.values()]
    if isinstance(v, (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)):
        return list(v)
    if isinstance(v, namespace):
        return list(object.__getattribute__(v, "_Namespace__attrs").values())
    return None


def _scalar(v):
    kind = type(v)
    if kind is str or kind is bytes or isinstance(v, (str, bytes, bytearray)):
        return len(v) + 1
    if kind is int:
        return v.bit_length() // 3 + 1
    return 24 if kind is float else 1


# The kinds of value _scalar measures, and how to measure many of one kind at once, in C.
_SCALARS = frozenset((str, bytes, int, float, bool, type(None)))
_MANY = {str: lambda xs: sum(map(len, xs)), bytes: lambda xs: sum(map(len, xs)),
         int: lambda xs: sum(map(int.bit_length, xs)) // 3, float: lambda xs: 23 * len(xs),
         bool: lambda xs: 0, type(None): lambda xs: 0}


def _flat(kids):
    """The cost of a container's parts if none is a container (most lists: strings, numbers), else None."""
    kinds = set(map(type, kids))
    if not kinds <= _SCALARS:
        return None
    if len(kinds) == 1:
        return len(kids) + _MANY[kinds.pop()](kids)
    # (not map(_scalar, kids): the tracer is called at each Python call, a comprehension is one)
    return len(kids) + sum(_MANY[kind]([k for k in kids if type(k) is kind]) for kind in kinds)


def _walk(value, cap, known=None):
    """(cost, depth, mutable) of value. Its cost is the size of its text, about: characters of strings, digits of
    integers, 24 per float, 1 per item, each part counted as often as it occurs, so that sharing ([x, x] of
    [x, x] of ...) cannot hide a size its repr or tojson would have; the walk visits each part once, and stops
    once the cost passes cap, or the depth MAX_DEPTH. A container met inside itself (a namespace may hold
    itself) counts 1, as repr writes it "...". Depth is how deeply containers nest (a flat list is 1). Mutable
    says whether it holds a namespace (whose attributes may change: its cost cannot be kept). `known` maps
    ids of live containers to their (cost, depth)."""
    namespace = _namespace_type()
    kids = _children(value, namespace)
    if kids is None:
        return _scalar(value), 0, False
    memo, active, mutable = dict(known or ()), {id(value)}, isinstance(value, namespace)
    stack = [[value, kids, 0, 1, 1]]  # container, its parts, next part, cost so far, depth
    while True:
        top = stack[-1]
        node, kids, i, total, depth = top
        if i == 0:
            flat = _flat(kids)
            if flat is not None:
                total, i = total + flat, len(kids)
        child = None
        while i < len(kids):
            kid = kids[i]
            i += 1
            kind = type(kid)
            if kind is str:
                total += len(kid) + 1
            elif kind is int or kind is bool or kind is float or kid is None:
                total += _scalar(kid)
            else:
                grand = _children(kid, namespace)
                if grand is None:
                    total += _scalar(kid)
                    if total > cap:
                        return total, depth, mutable
                    continue
                if not mutable and isinstance(kid, namespace):
                    mutable = True
                if id(kid) in memo:
                    cost, below = memo[id(kid)]
                    total, depth = total + cost, max(depth, below + 1)
                elif id(kid) in active:
                    total += 1
                else:
                    flat = _flat(grand)
                    if flat is None:
                        child = [kid, grand, 0, 1, 1]
                        break
                    memo[id(kid)] = (1 + flat, 1)
                    total, depth = total + 1 + flat, max(depth, 2)
            if total > cap:
                return total, depth, mutable
        top[2], top[3], top[4] = i, total, depth
        if child is not None:
            if len(stack) >= MAX_DEPTH:
                return total, MAX_DEPTH + 1, mutable
            active.add(id(child[0]))
            stack.append(child)
            continue
        stack.pop()
        active.discard(id(node))
        memo[id(node)] = (total, depth)
        if not stack:
            return total, depth, mutable
        parent = stack[-1]
        parent[3] += total
        parent[4] = max(parent[4], depth + 1)
        if parent[3] > cap:
            return parent[3], parent[4], mutable


def _cost(value, cap):
    return _walk(value, cap)[0]


def _size(render, v):
    # (size, depth, mutable): what checked() holds a value to, characters of a string, or what measure() says.
    if isinstance(v, (str, bytes, bytearray)):
        return len(v), 0, False
    return render.measure(v)


def _text_bound(v, cap, conversion="r"):
    """An upper bound on len(str(v)) (conversion "s") or len(repr(v)) or len(ascii(v)), escapes included."""
    if isinstance(v, str) and conversion == "s":
        return len(v)
    if isinstance(v, (str, bytes, bytearray)):
        return 10 * len(v) + 3
    if type(v) is int:
        return v.bit_length() // 3 + 2
    if isinstance(v, (float, bool)) or v is None:
        return 400  # '%.0f' % 1e308 has 309 digits
    if isinstance(v, _CONTAINERS) or isinstance(v, _namespace_type()):
        return 10 * _cost(v, cap) + 3
    return 200


def _digits(text, i):
    j = i
    while j < len(text) and "0" <= text[j] <= "9":
        j += 1
    return text[i:j], j


def _number(render, digits, what):
    if not digits:
        return 0
    if len(digits) > 12:
        render.size(10 ** 12, what)
    n = int(digits)
    render.size(n, what)
    return n


def _percent_estimate(render, fmt, args):
    """An upper bound on len(fmt % args), reading the conversions as CPython does (a key in balanced
    parentheses, flags, width or *, .precision or *, length modifier, type, each taking the next argument);
    refuses a width or precision over the bound before Python would allocate it."""
    text = fmt.decode("latin-1") if isinstance(fmt, (bytes, bytearray)) else str(fmt)
    positional = list(args) if isinstance(args, tuple) else [args]
    mapping = args if isinstance(args, Mapping) else None
    cap, escape = _SLACK * render.limit, 6 if hasattr(fmt, "__html__") else 1  # Markup escapes what it formats
    index, total, i = 0, len(text), text.find("%")

    def take():
        nonlocal index
        index += 1
        return positional[index - 1] if index <= len(positional) else None

    while i != -1:
        i, key = i + 1, None
        if i < len(text) and text[i] == "(":
            depth, start, i = 1, i + 1, i + 1
            while i < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            key = text[start:i - 1]
        while i < len(text) and text[i] in "-+ #0":
            i += 1
        sizes = []
        for part in ("width", "precision"):
            if part == "precision":
                if i < len(text) and text[i] == ".":
                    i += 1
                else:
                    break
            if i < len(text) and text[i] == "*":
                star, i = take(), i + 1
                sizes.append(abs(star) if type(star) is int else 0)
            else:
                digits, i = _digits(text, i)
                sizes.append(_number(render, digits, f"a % format {part}"))
        while i < len(text) and text[i] in "hlL":
            i += 1
        conversion = text[i:i + 1]
        widest = max(sizes)
        render.size(widest, "a % format width")
        if conversion == "%":
            total += widest + 1
        else:
            if mapping is not None and key is not None and key in mapping:
                arg_bound = _text_bound(mapping[key], cap, conversion)
            elif mapping is not None:
                arg_bound = max((_text_bound(v, cap) for v in mapping.values()), default=0)
            else:
                arg_bound = _text_bound(take(), cap, conversion)
            total += widest + escape * arg_bound
        if total > cap:
            break
        i = text.find("%", i + 1)
    return total


def _arg(args, kwargs, index, name, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default) if kwargs else default


def _int(value):
    return value if type(value) is int else None


def _len(value):
    return len(value) if isinstance(value, (str, bytes, bytearray)) else 0


# -- checks made before an operation that can build far more than its operands --------------------------------
# Each takes the filter's or method's arguments as the template passed them (pass_context arguments removed) and
# returns None, or the positional arguments to call with instead (an iterable read into a list once, to measure).

def _check_width(render, args, kwargs, index, name, default):
    width = _int(_arg(args, kwargs, index, name, default))
    if width is not None:
        render.size(width, f"a string padded to its {name}")


def _pre_center(render, args, kwargs):
    _check_width(render, args, kwargs, 1, "width", 80)


def _pre_indent(render, args, kwargs):
    s, width = _arg(args, kwargs, 0, "s", ""), _arg(args, kwargs, 1, "width", 4)
    step = _int(width)
    if step is not None:
        render.size(step, "an indent")  # " " * width comes first
    step = step if step is not None else _len(width)
    if isinstance(s, str):
        render.estimate(len(s) + (s.count("\n") + 2) * max(step, 0), "indent")


def _pre_wordwrap(render, args, kwargs):
    s, wrapstring = _arg(args, kwargs, 0, "s", ""), _arg(args, kwargs, 3, "wrapstring")
    render.estimate(2 * _len(s) + (_len(s) + 1) * _len(wrapstring), "wordwrap")


def _pre_format(render, args, kwargs):
    if args and isinstance(args[0], (str, bytes)):
        render.estimate(_percent_estimate(render, args[0], kwargs or tuple(args[1:])), "format")


def _pre_fill(render, args, kwargs, name):
    count = _int(_arg(args, kwargs, 1, name))
    if count is not None:
        render.size(count, f"a {name}")
        fill = _arg(args, kwargs, 2, "fill_with")
        if fill is not None:
            render.estimate(count * _cost(fill, _SLACK * render.limit), name)


def _pre_batch(render, args, kwargs):
    _pre_fill(render, args, kwargs, "linecount")


def _pre_slice(render, args, kwargs):
    _pre_fill(render, args, kwargs, "slices")


def _materialized(args, kwargs, name):
    # An iterator (a generator from map, select, batch...) is read into a list once, measured, and handed on.
    value = _arg(args, kwargs, 0, name)
    if value is None or isinstance(value, (list, tuple, str, bytes, dict)):
        return value, None
    try:
        iterator = iter(value)
    except TypeError:  # not iterable: the filter says so itself
        return value, None
    items = list(iterator)
    if args:
        return items, (items, *args[1:])
    kwargs[name] = items
    return items, ()


def _pre_join(render, args, kwargs):
    items, replaced = _materialized(args, kwargs, "value")
    sep = _arg(args, kwargs, 1, "d", "")
    sep = len(sep) if isinstance(sep, str) else _text_bound(sep, _SLACK * render.limit, "s")
    if isinstance(items, (str, bytes)):
        render.estimate(len(items) * (sep + 1), "join")
    elif items is not None and hasattr(items, "__len__"):
        cap = _SLACK * render.limit
        total = sep * len(items)
        if set(map(type, items)) <= {str}:
            total += sum(map(len, items))
        else:
            for item in items:
                total += _text_bound(item, cap, "s")
                if total > cap:
                    break
        render.estimate(total, "join")
    return replaced


def _pre_sum(render, args, kwargs):
    items, replaced = _materialized(args, kwargs, "iterable")
    start = _arg(args, kwargs, 2, "start", 0)
    if isinstance(items, (list, tuple)) and isinstance(start, (list, tuple)):
        # sum() of lists copies the growing list at each item, inside C where the deadline cannot stop it.
        size = len(start) + sum([len(x) for x in items if isinstance(x, (list, tuple))])
        render.estimate((len(items) + 1) * size, "sum")
    return replaced


def _pre_replace(render, args, kwargs):
    s, old, new = (_arg(args, kwargs, i, name) for i, name in enumerate(("s", "old", "new")))
    _replace_estimate(render, s, old, new, _arg(args, kwargs, 3, "count"))


def _replace_estimate(render, s, old, new, count):
    if isinstance(s, (str, bytes)) and type(old) is type(s) and type(new) is type(s):
        hits = len(s) + 1 if not old else s.count(old)
        if _int(count) is not None and count >= 0:
            hits = min(hits, count)
        render.estimate(len(s) + hits * max(0, len(new) - len(old)), "replace")


def _pre_tojson(render, args, kwargs):
    indent, separators = _arg(args, kwargs, 2, "indent"), _arg(args, kwargs, 3, "separators")
    if indent is None and separators is None:
        return  # then json.dumps writes at most 12 characters per character or item of a bounded value
    step = _int(indent)
    if step is not None:
        render.size(step, "an indent")
    step = step if step is not None else _len(indent)
    extra = sum(_len(s) for s in separators) if isinstance(separators, (list, tuple)) else 0
    # Each item gets a line, indented as deeply as it nests, and separators: at most `cost` items.
    cost, depth, _ = _walk(_arg(args, kwargs, 0, "x"), _SLACK * render.limit)
    render.estimate(cost * (14 + extra + max(step, 0) * (depth + 1)), "tojson")


def _pre_pprint(render, args, kwargs):
    cost, depth, _ = _walk(_arg(args, kwargs, 0, "value"), _SLACK * render.limit)
    render.estimate(cost * (11 + depth), "pprint")


def _pre_urlize(render, args, kwargs):
    n = _len(_arg(args, kwargs, 0, "value"))
    extra = _len(_arg(args, kwargs, 3, "target")) + _len(_arg(args, kwargs, 4, "rel"))
    # Each link (at least 4 characters and a space) is written twice, with an <a> tag around it.
    render.estimate(3 * n + (n // 5 + 1) * (64 + extra), "urlize")


_FILTER_CHECKS = {
    "center": _pre_center, "indent": _pre_indent, "wordwrap": _pre_wordwrap, "format": _pre_format,
    "batch": _pre_batch, "slice": _pre_slice, "join": _pre_join, "sum": _pre_sum, "replace": _pre_replace,
    "tojson": _pre_tojson, "pprint": _pre_pprint, "urlize": _pre_urlize,
}


def _pre_method(render, owner, name, args, kwargs):
    """Checks for the methods of strings, bytes and integers that build more than their operands."""
    if isinstance(owner, (str, bytes, bytearray)):
        if name in ("center", "ljust", "rjust", "zfill"):
            _check_width(render, args, kwargs, 0, "width", 0)
        elif name == "expandtabs":
            tab = _int(_arg(args, kwargs, 0, "tabsize", 8))
            if tab is not None:
                render.size(tab, "a tab")
                render.estimate(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * tab,
                                "expandtabs")
        elif name == "replace":
            _replace_estimate(render, owner, _arg(args, kwargs, 0, "old"), _arg(args, kwargs, 1, "new"),
                              _arg(args, kwargs, 2, "count", -1))
        elif name == "join" and len(args) == 1 and not kwargs:
            items = args[0]
            if isinstance(items, (str, bytes, bytearray)):
                render.estimate((len(owner) + 1) * len(items), "join")
                return None
            if not isinstance(items, (list, tuple)):
                try:
                    items = list(iter(items))
                except TypeError:
                    return None
            render.estimate(len(owner) * len(items) + sum([_len(x) for x in items]), "join")
            return (items,)
        elif name == "translate" and isinstance(owner, str) and args:
            table = args[0]
            values = table.values() if isinstance(table, Mapping) else table if isinstance(table, (list, tuple)) else ()
            render.estimate(len(owner) * max((_len(v) for v in values), default=1), "translate")
    elif type(owner) is int and name == "to_bytes":
        _check_width(render, args, kwargs, 0, "length", 1)
    return None


# -- inputs -------------------------------------------------------------------------------------------------------

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _plain(value):
    """value rebuilt from JSON-like types, as transformers does: whatever else the caller passes in (arrays,
    tensors, images) has methods the sandbox does not know, so it becomes a placeholder such as "<Tensor>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _messages(messages):
    if isinstance(messages, (str, bytes, Mapping)) or not hasattr(messages, "__iter__"):
        raise InvalidArgumentError("chat template: messages must be a list of {role, content} dicts")
    out = []
    for message in messages:
        message = _plain(message)
        if not isinstance(message, dict):
            raise InvalidArgumentError(f"chat template: a message must be a dict, not {message!r:.80}")
        # Keys set to None are dropped (APIs send content=None), and reasoning is given under each name
        # templates read it by, as transformers does.
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _dicts(values, name):
    if values is None:
        return None
    values = list(values)
    for value in values:
        if not isinstance(value, Mapping):
            raise InvalidArgumentError(f"chat template: {name} must be dicts (JSON schemas), not {value!r:.80}")
    return _plain(values)


# -- the environment ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sandbox():
    """The one Jinja environment every render uses (Jinja environments are thread-safe; what a render has used
    of its bounds lives in a per-thread _Render). jinja2 is imported here, on the first chat template."""
    import types

    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.compiler import CodeGenerator, optimizeconst
    from jinja2.exceptions import SecurityError
    from jinja2.runtime import markup_join
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
    from jinja2.utils import _PassArg
    from markupsafe import EscapeFormatter, Markup

    def raise_exception(message):
        raise ChatTemplateError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers' tojson: no HTML escaping, json.dumps's options.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        # transformers' dict(): an instance, so that a template reaches no class internals through it.
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # transformers' namespace(): no underscore-prefixed attributes. Its repr charges what it builds, since a
        # namespace may hold lists of namespaces set after _cost counted them.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace.check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace.check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        def __repr__(self):
            text = jinja2.utils.Namespace.__repr__(self)
            render = getattr(_local, "render", None)
            if render is not None:
                render.size(len(text))
                render.charge(len(text) + 4096)  # reprs of many small ones take long too (templates print none)
            return text

        @staticmethod
        def check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"chat templates cannot set underscore-prefixed attributes on a namespace "
                                    f"({name!r})")

    class Generation(jinja2.ext.Extension):
        # transformers' {% generation %} ... {% endgeneration %} (it marks assistant text; rendered as is).
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

        def _generation(self, caller):
            return caller()

    class BoundedFormatter(SandboxedFormatter):
        # str.format: each field's width and precision, and all the fields together, held to the bound.
        def vformat(self, format_string, args, kwargs):
            self.written = 0
            return super().vformat(format_string, args, kwargs)

        def format_field(self, value, format_spec):
            render = _current()
            render.tick()
            for digits in re.findall(r"[0-9]+", str(format_spec)):  # the width and the precision
                _number(render, digits, "a format width")
            text = super().format_field(value, format_spec)
            self.written += len(text)
            render.size(self.written, "a formatted string")
            return text

    class BoundedEscapeFormatter(BoundedFormatter, EscapeFormatter):
        pass

    class BoundedCodeGenerator(CodeGenerator):
        # `a ~ b` and list, tuple and dict displays go through the environment too, so that what they build is
        # measured (a display of displays doubles a size at each step without calling anything).
        @optimizeconst
        def visit_Concat(self, node, frame):
            if frame.eval_ctx.volatile:
                escape = "context.eval_ctx.autoescape"
            else:
                escape = "True" if frame.eval_ctx.autoescape else "False"
            self.write("environment.aios_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write(f"), {escape})")

        def visit_List(self, node, frame):
            self.write("environment.aios_built(")
            super().visit_List(node, frame)
            self.write(")")

        def visit_Dict(self, node, frame):
            self.write("environment.aios_built(")
            super().visit_Dict(node, frame)
            self.write(")")

        def visit_Tuple(self, node, frame):
            if node.ctx != "load":  # an assignment target: {% for a, b in ... %}
                return super().visit_Tuple(node, frame)
            self.write("environment.aios_built(")
            super().visit_Tuple(node, frame)
            self.write(")")

    lipsum = jinja2.utils.generate_lorem_ipsum

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        code_generator_class = BoundedCodeGenerator
        intercepted_binops = frozenset(("+", "*", "**", "%"))

        def unsafe_undefined(self, obj, attribute):
            # Jinja hands back an Undefined that fails only once used; a template reaching for internals is
            # refused at once.
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe.")

        def call_binop(self, context, operator, left, right):
            render = _current()
            render.tick()
            if operator == "+" and type(left) is str and type(right) is str:  # most of what templates do
                n = len(left) + len(right)
                render.size(n, "a concatenation")
                render.charge(n)
                return left + right
            exact = depth = mutable = None  # what checked() would find in the result, known beforehand
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if type(n) in (int, bool) and isinstance(seq, (str, bytes, list, tuple)):  # Markup too
                        # a list's _cost counts the list itself once, and its items n times
                        nested = isinstance(seq, (list, tuple))
                        size, depth, mutable = _size(render, seq)
                        exact = (size - nested) * max(n, 0) + nested
                        render.size(exact, "a repeated sequence")
                if type(left) is int and type(right) is int:
                    render.bits(left.bit_length() + right.bit_length())
            elif operator == "+":
                if type(left) is type(right) and type(left) in (str, bytes, list, tuple):
                    (a, a_depth, a_mutable), (b, b_depth, b_mutable) = _size(render, left), _size(render, right)
                    exact, depth = a + b - (type(left) in (list, tuple)), max(a_depth, b_depth)
                    mutable = a_mutable or b_mutable
                    render.size(exact, "a concatenation")
                elif type(left) is int and type(right) is int:
                    render.bits(max(left.bit_length(), right.bit_length()) + 1)
            elif operator == "**":
                if type(left) is int and type(right) is int and right > 0 and abs(left) > 1:
                    render.bits(left.bit_length() * right)
            elif operator == "%" and isinstance(left, (str, bytes)):
                render.estimate(_percent_estimate(render, left, right), "a % format")
            result = self.binop_table[operator](left, right)
            if exact is not None and type(result) in (str, bytes, list, tuple):
                render.depth(depth)
                render.charge(len(result))  # a list of what exists: its items are new, what they hold is not
                if type(result) in (list, tuple) and not mutable:
                    render.remember(result, exact, depth)
                return result
            return render.checked(result, (left, right), shallow=True)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805  (jinja's signature)
            render = _current()
            render.tick()
            owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", None)
            replaced = None
            if owner is not None and isinstance(name, str):
                replaced = _pre_method(render, owner, name, args, kwargs)
            elif __obj is lipsum:
                n, low, high = (_int(_arg(args, kwargs, i, k, d)) for i, k, d in
                                ((0, "n", 5), (2, "min", 20), (3, "max", 100)))
                if None not in (n, low, high):
                    render.estimate(max(n, 0) * max(low, high, 0) * 16, "lipsum")
            elif __obj is strftime_now and args:
                render.estimate(_len(args[0]) * 32, "strftime_now")
            if replaced is not None:
                args = replaced
            result = super().call(__context, __obj, *args, **kwargs)
            return render.checked(result, (*args, owner), kwargs)

        def wrap_str_format(self, value):
            # jinja's, with BoundedFormatter in place of SandboxedFormatter.
            if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or \
                    value.__name__ not in ("format", "format_map"):
                return None
            f_self = value.__self__
            if not isinstance(f_self, str):
                return None
            str_type, is_format_map = type(f_self), value.__name__ == "format_map"
            if isinstance(f_self, Markup):
                formatter = BoundedEscapeFormatter(self, escape=f_self.escape)
            else:
                formatter = BoundedFormatter(self)

            def wrapper(*args, **kwargs):
                if is_format_map:
                    if kwargs:
                        raise TypeError("format_map() takes no keyword arguments")
                    if len(args) != 1:
                        raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                    kwargs, args = args[0], ()
                return str_type(formatter.vformat(f_self, args, kwargs))

            return functools.update_wrapper(wrapper, value)

        def concat(self, parts):
            # Joins the output buffered by macros, blocks, {% set %}...{% endset %} and caller().
            render = _current()
            render.tick()
            if type(parts) is list:
                if not all(isinstance(part, str) for part in parts):
                    return "".join(parts)  # raises, as jinja's concat does
                render.size(sum(map(len, parts)), "a block's output")
                joined = "".join(parts)
            else:
                out, n = [], 0
                for part in parts:
                    if not isinstance(part, str):
                        "".join((part,))
                    n += len(part)
                    render.size(n, "a block's output")
                    out.append(part)
                joined = "".join(out)
            render.charge(len(joined))
            return joined

        def aios_concat(self, parts, escape):
            render = _current()
            render.tick()
            if escape:
                return render.checked(markup_join(parts))
            texts = [str(p) for p in parts]
            n = sum(map(len, texts))
            render.size(n, "a ~ concatenation")
            render.charge(n)
            return "".join(texts)

        def aios_built(self, value):
            render = _current()
            render.tick()
            return render.checked(value, shallow=True)

    def bounded_filter(name, func):
        check, skip = _FILTER_CHECKS.get(name), 0 if _PassArg.from_obj(func) is None else 1

        @functools.wraps(func)  # keeps jinja_pass_arg (pass_context and friends)
        def bounded(*args, **kwargs):
            render = _current()
            render.tick()
            if check is not None:
                replaced = check(render, args[skip:], kwargs)
                if replaced is not None:
                    args = (*args[:skip], *replaced)
            return render.checked(func(*args, **kwargs), args, kwargs)

        return bounded

    def bounded_test(func):
        @functools.wraps(func)
        def bounded(*args, **kwargs):
            _current().tick()
            return func(*args, **kwargs)

        return bounded

    # The environment transformers renders templates in (chat_template_utils._cached_compile_jinja_template),
    # so that outputs agree.
    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace)
    env.filters = {name: bounded_filter(name, f) for name, f in env.filters.items()}
    env.tests = {name: bounded_test(f) for name, f in env.tests.items()}
    return env


def apply_chat_template(template, messages, add_generation_prompt=True, *, tools=None, documents=None,
                        max_output_chars=MAX_OUTPUT_CHARS, timeout_s=TIMEOUT_S, **template_kwargs):
    """Renders a model's Jinja chat template for `messages` (a list of {role, content, ...} dicts), as
    transformers' tokenizer.apply_chat_template(..., tokenize=False) does: the same Jinja environment and
    globals (raise_exception, strftime_now, tojson, namespace, dict, {% generation %}), the same message
    clean-up (keys set to None dropped, reasoning under each of its names, anything but JSON-like data
    replaced by a placeholder). `tools`, `documents` and `template_kwargs` (bos_token=..., ...) reach the
    template as variables.

    A template is untrusted code, so it runs in a sandbox (jinja2's ImmutableSandboxedEnvironment, stricter):
    * no Python internals: an underscore attribute, or `.mro`, is a SecurityError at once; lists and dicts
      cannot be modified; the template sees only its variables and Jinja's globals (no import, open or os;
      {% include %} and {% import %} have no loader to read files with);
    * bounded time: `timeout_s` (default 2 s) of wall clock, checked at each line of Python the render runs
      (through sys.settrace, so loops that call nothing are stopped too; the tracer in place before is put
      back after) and by every filter, test, call and operator;
    * bounded output: at most `max_output_chars` (default 1 MiB) characters;
    * bounded values: nothing the template builds (a string, a list, a dict, counting a shared part as often
      as it occurs) may pass `max_output_chars` characters or items, an integer 4096 bits, a list or dict
      100 levels of nesting, a range 100000 items; all it builds together may reach 16 x max_output_chars
      (a template printing its namespaces is charged 4096 more per repr). Operations that could build far more
      than their operands ('a' * n, center, indent, format widths, replace, join, ...) are checked before
      they run. The template itself may be at most 256 KiB.
    Any failure raises ChatTemplateError (an aios.InvalidArgumentError, field "chat_template"), its message
    saying what failed; __cause__ holds the underlying exception (jinja2.SecurityError for the sandbox).
    """
    if not isinstance(template, str):
        raise InvalidArgumentError(f"chat template: the template must be a str, not {type(template).__name__}")
    if type(max_output_chars) is not int or max_output_chars < 1:
        raise InvalidArgumentError(f"chat template: max_output_chars must be a positive int, not {max_output_chars!r}")
    if not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < float("inf"):
        raise InvalidArgumentError(f"chat template: timeout_s must be a positive number, not {timeout_s!r}")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"chat template: the template has {len(template)} characters, more than "
                                f"{MAX_TEMPLATE_CHARS}")
    variables = {
        **_plain(template_kwargs),
        "messages": _messages(messages),
        "tools": _dicts(tools, "tools"),
        "documents": _dicts(documents, "documents"),
        "add_generation_prompt": _plain(add_generation_prompt),
    }
    return _Render(max_output_chars, timeout_s).run(_sandbox(), template, variables)


def _prompt_ids(backbone, prompt, chat):
    tokenizer = backbone.tokenizer
    if tokenizer is None:
        raise ValueError("the backbone has no tokenizer; tokenize and use Backbone.generate")
    if chat:
        template = backbone.chat_template
        if template is None:
            raise ValueError("the model has no chat template")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer, tokenizer.encode(apply_chat_template(template, messages), add_special_tokens=False)
    return tokenizer, tokenizer.encode(prompt)


def stream_text(backbone, prompt, *, chat=False, max_new_tokens=128, **sampling):
    """Yields the reply to `prompt` (a string, or with chat=True a list of {role, content}
    messages) piece by piece; a piece is only given out once its characters are complete."""
    tokenizer, ids = _prompt_ids(backbone, prompt, chat)
    stop = end_of_turn_ids(tokenizer)
    latents = backbone.embed(torch.tensor([ids]))
    generated, printed = [], 0
    for step in backbone.stream(latents, max_new_tokens=max_new_tokens, stop_ids=stop, **sampling):
        token = int(step.ids[0])
        if token >= 0 and not tokenizer.is_special(token):
            generated.append(token)
        text = tokenizer.decode(generated)
        if len(text) > printed and not text.endswith("\ufffd"):
            yield text[printed:]
            printed = len(text)
    text = tokenizer.decode(generated)
    if len(text) > printed:
        yield text[printed:]


def generate_text(backbone, prompt, *, chat=False, max_new_tokens=128, **sampling):
    """The whole reply to `prompt` as one string (see stream_text)."""
    return "".join(stream_text(backbone, prompt, chat=chat, max_new_tokens=max_new_tokens, **sampling))
