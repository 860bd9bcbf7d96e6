"""Load a spec: YAML with line numbers and duplicate-key errors, CLI overrides, validation that reports every
problem at once (dotted path, YAML line, did-you-mean, fix), and the `--tiny` transform.

No torch is imported here.
"""
from __future__ import annotations

import codecs
import math
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rewardtune.errors import Problem, SpecError, UnknownRewardError, UsageError
from rewardtune.registry import did_you_mean
from rewardtune.spec.schema import FLOW_FAMILIES, GRADIENT_METHODS, Spec

PathT = tuple[str | int, ...]


@dataclass
class SpecSource:
    """Raw spec data plus where each value came from."""

    data: Any
    lines: dict[PathT, int] = field(default_factory=dict)
    name: str = "<spec>"
    base_dir: Path = field(default_factory=Path.cwd)
    problems: list[Problem] = field(default_factory=list)
    reported: set[PathT] = field(default_factory=set)  # paths whose value was refused (problem already given)
    unresolved: list[str] = field(default_factory=list)  # names left unchecked when validating without imports


def dotted(path: PathT) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# ------------------------------------------------------------------------------------------------------ YAML
# Limits that keep hostile or broken YAML from taking time or memory. They are far above what a spec needs (the
# shipped specs are about 1 KB, 100 values and 4 levels deep) and are checked before anything is built.
MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_ALIAS_NODES = 10_000  # values reached through aliases, beyond those written out in the file
MAX_INT_DIGITS = 100
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BAD = object()  # a value that could not be read (already reported as a problem)


class _TooDeep(yaml.YAMLError):
    def __init__(self, mark: Any):
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with flow nesting (`[[[[`) bounded while scanning: for each `[` its scanner keeps a
    possible simple key and rescans them all per token, so deep flow nesting costs ~0.4 s before the parser sees
    the first event. Refused at MAX_DEPTH instead."""

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 - PyYAML's signature
        if self.flow_level >= MAX_DEPTH:
            raise _TooDeep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


def _too_deep(line: int, src: SpecSource) -> SpecError:
    return SpecError([Problem("", f"the YAML is nested more than {MAX_DEPTH} levels deep", line,
                              "a spec is a few levels deep: flatten the data")], src.name)


def _tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _check_shape(text: str, src: SpecSource) -> None:
    """Walk the parser's events (iteratively: nothing is composed or built) and refuse what would blow up when
    built: nesting deeper than MAX_DEPTH, an alias inside the node it names, and aliases that expand to more than
    MAX_ALIAS_NODES values (the "billion laughs": 550 bytes of nested aliases expand to 10^9 values)."""

    def refuse(line: int, msg: str, fix: str) -> SpecError:
        return SpecError([Problem("", msg, line, fix)], src.name)

    open_: list[tuple[str | None, int]] = []  # each open collection: its anchor, values counted before it
    size: dict[str, int] = {}  # anchor -> values it expands to
    written = expanded = 0
    for ev in yaml.parse(text, Loader=_Loader):
        line = ev.start_mark.line + 1
        if isinstance(ev, yaml.NodeEvent) and not isinstance(ev, yaml.AliasEvent) and ev.anchor in size:
            return  # an anchor defined twice: the composer refuses it before building anything
        if isinstance(ev, yaml.CollectionStartEvent):
            if len(open_) >= MAX_DEPTH:
                raise _too_deep(line, src)
            open_.append((ev.anchor, expanded))
            if ev.anchor is not None:
                size[ev.anchor] = 0  # defined (its size is known when it closes)
            written += 1
            expanded += 1
        elif isinstance(ev, yaml.CollectionEndEvent):
            anchor, before = open_.pop()
            if anchor is not None:
                size[anchor] = expanded - before
        elif isinstance(ev, yaml.ScalarEvent):
            written += 1
            expanded += 1
            if ev.anchor is not None:
                size[ev.anchor] = 1
        elif isinstance(ev, yaml.AliasEvent):
            if any(a == ev.anchor for a, _ in open_):
                raise refuse(line, f"the alias '*{ev.anchor}' is inside the node '&{ev.anchor}' it refers to "
                                   "(a recursive alias)", "write the value out instead of the alias")
            expanded += size.get(ev.anchor, 1)  # an undefined alias: the composer reports it
            if expanded - written > MAX_ALIAS_NODES:
                raise refuse(line, f"YAML aliases (here '*{ev.anchor}') expand to more than {MAX_ALIAS_NODES} "
                                   "values: refused as a YAML bomb", "write the values out; a spec never needs "
                                                                      "this many")


def _compose(text: str, src: SpecSource) -> yaml.Node | None:
    """The node graph of `text`, after `_check_shape`. yaml.YAMLError (malformed YAML) is left to the caller."""
    try:
        _check_shape(text, src)
        return yaml.compose(text, Loader=_Loader)
    except _TooDeep as e:
        raise _too_deep(e.mark.line + 1, src) from None


def _yaml_problem(e: yaml.YAMLError, text: str) -> Problem:
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow (control characters)
        line = text.count("\n", 0, e.position) + 1 if isinstance(e.position, int) else None
        char = e.character if isinstance(e.character, str) else chr(e.character)
        return Problem("", f"malformed YAML: the character U+{ord(char):04X} is not allowed in YAML", line,
                       "remove it (the file may be binary, or in another encoding than UTF-8)")
    mark = getattr(e, "problem_mark", None)
    line = mark.line + 1 if mark else None
    what = getattr(e, "problem", None) or str(e)
    ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if what == "second occurrence" and ctx and cmark is not None:  # PyYAML's duplicate anchor
        what = f"{ctx.removesuffix('; first occurrence')} (first on line {cmark.line + 1})"
    elif ctx and cmark is not None and mark is not None and cmark.line != mark.line:
        what += f" ({ctx} that starts on line {cmark.line + 1})"
    return Problem("", f"malformed YAML: {what}", line, "check indentation, colons and quotes around that line")


def _scalar(node: yaml.ScalarNode, path: PathT, src: SpecSource, ctor: Any) -> Any:
    line = node.start_mark.line + 1

    def bad(msg: str, fix: str) -> object:
        src.problems.append(Problem(dotted(path), msg, line, fix))
        src.reported.add(path)
        return _BAD

    try:
        value = ctor.construct_object(node, deep=True)
    except yaml.YAMLError as e:  # unknown tag, bad !!binary, ...
        if ctor.yaml_constructors.get(node.tag) is None:
            return bad(f"unknown YAML tag '{_tag(node.tag)}'", "remove the tag: a spec holds plain values (text, "
                                                                "numbers, true/false, null, lists, mappings)")
        return bad(f"cannot read the {_tag(node.tag)} value: {getattr(e, 'problem', None) or e}",
                   "remove the tag, or write a plain value")
    except ValueError as e:  # Python's limit on digits of an int, an impossible date, ...
        if node.tag == "tag:yaml.org,2002:int":
            return bad(f"the integer has {len(node.value)} characters: too large",
                       f"use an integer of at most {MAX_INT_DIGITS} digits")
        return bad(f"cannot read the value {node.value[:40]!r}: {e}", "fix the value, or quote it to make it text")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_DIGITS * 3.33:
        return bad(f"the integer {node.value[:20]}... is too large", f"use an integer of at most {MAX_INT_DIGITS} "
                                                                      "digits")
    return value


def _construct(node: yaml.Node, path: PathT, src: SpecSource, ctor: Any) -> Any:
    """Python data from a node graph that `_check_shape` bounded, recording each value's line and reporting
    duplicate keys, merge keys, keys that are not plain and unknown tags as problems."""
    src.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, path, src, ctor)
    expected = _MAP_TAG if isinstance(node, yaml.MappingNode) else _SEQ_TAG
    if node.tag != expected:
        known = ctor.yaml_constructors.get(node.tag) is not None  # !!set, !!omap: YAML's, but not for specs
        src.problems.append(Problem(dotted(path), f"{'unsupported' if known else 'unknown'} YAML tag "
                                                  f"'{_tag(node.tag)}'", node.start_mark.line + 1,
                                    "remove the tag: a spec holds plain lists and mappings"))
        src.reported.add(path)
        return _BAD
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*path, i), src, ctor) for i, v in enumerate(node.value)]
    out: dict[Any, Any] = {}
    seen: dict[Any, int] = {}
    for knode, vnode in node.value:
        kline = knode.start_mark.line + 1
        if knode.tag == _MERGE_TAG:
            src.problems.append(Problem(dotted(path), "YAML merge keys (<<) are not supported", kline,
                                        "write the keys out"))
            continue
        if not isinstance(knode, yaml.ScalarNode):
            src.problems.append(Problem(dotted(path), "a key must be plain text, not a list or a mapping", kline,
                                        "write the key as a plain name"))
            continue
        key = _scalar(knode, path, src, ctor)
        if key is _BAD:
            continue
        if not isinstance(key, str):
            key = str(key)
        if key in seen:
            src.problems.append(Problem(
                dotted((*path, key)), f"duplicate key '{key}' (first on line {seen[key]})",
                kline, "remove one of them; YAML would silently keep only the last"))
        seen[key] = kline
        out[key] = _construct(vnode, (*path, key), src, ctor)
        src.lines[(*path, key)] = kline
    return out


def _build(node: yaml.Node | None, src: SpecSource, path: PathT = ()) -> Any:
    # a fresh constructor each time: it keeps every object it builds
    return None if node is None else _construct(node, path, src, yaml.constructor.SafeConstructor())


def parse_yaml(text: str, name: str = "<spec>", base_dir: Path | None = None) -> SpecSource:
    """Parse spec text. Malformed or hostile YAML raises SpecError; value-level problems (duplicate keys, unknown
    tags, ...) are collected in `.problems` for `validate_source` to report with the rest."""
    src = SpecSource(data=None, name=name, base_dir=base_dir or Path.cwd())
    try:
        node = _compose(text, src)
    except yaml.YAMLError as e:
        raise SpecError([_yaml_problem(e, text)], name) from None
    src.data = {} if node is None else _build(node, src)
    if not isinstance(src.data, dict):
        raise SpecError([Problem("", "a spec must be a YAML mapping (key: value), got "
                                     f"{type(src.data).__name__ if src.data is not _BAD else 'a tagged value'}",
                                 1, "start from a file in specs/")], name)
    return src


_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))


def source_from_bytes(data: bytes, name: str = "<spec>", base_dir: Path | None = None) -> SpecSource:
    """Decode a spec file's bytes (UTF-8, with or without a byte-order mark) and parse them. Anything else
    (UTF-16, Latin-1, binary, too large) raises SpecError."""

    def refuse(msg: str, fix: str, line: int | None = None) -> SpecError:
        return SpecError([Problem("", msg, line, fix)], name)

    if len(data) > MAX_SPEC_BYTES:
        raise refuse(f"the file is larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a few KB",
                     "put long prompt lists in a prompts file (`prompts: {train: {file: prompts.txt}}`)")
    for bom, enc in _BOMS:
        if data.startswith(bom):
            raise refuse(f"the file is {enc} text (it starts with a {enc} byte-order mark); specs are UTF-8",
                         "save the file as UTF-8")
    if b"\0" in data:
        raise refuse("the file is binary, not text (it contains NUL bytes)", "give a YAML spec (UTF-8 text)",
                     data.count(b"\n", 0, data.index(b"\0")) + 1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise refuse(f"the file is not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} is not valid UTF-8 "
                     "(Latin-1 or another legacy encoding?)", "save the file as UTF-8", line) from None
    return parse_yaml(text, name=name, base_dir=base_dir)


def find_spec_file(path: str | Path) -> Path | None:
    """The file a spec argument names (`rewardtune.spec.find`: a local file, else a shipped spec), or None."""
    from rewardtune.spec.find import find_spec

    found = find_spec(path)
    return found.path if found is not None else None


def _read_spec_bytes(p: Path, shown: str) -> bytes:
    def refuse(msg: str, fix: str) -> SpecError:
        return SpecError([Problem("", msg, None, fix)], shown)

    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise refuse(f"'{shown}' is a directory, not a spec file", "give the path of a .yaml file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block, /dev/zero would never end
            raise refuse(f"'{shown}' is not a regular file (a FIFO, device or socket)",
                         "give the path of a .yaml file")
        with open(p, "rb") as f:
            return f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise refuse(f"cannot read '{shown}': {e.strerror or e}", "check the path and that you may read the "
                                                                  "file") from None


def read_spec_source(path: str | Path, base_dir: Path | None = None) -> SpecSource:
    """Read a spec file. Relative paths in it resolve against its folder, or against `base_dir` when given (a
    copy of a spec, such as the one `submit` puts in the job folder, resolves them as the original did)."""
    p = find_spec_file(path)
    if p is None:
        from rewardtune.spec.find import shipped_specs

        names = [x.stem for x in shipped_specs()]
        raise SpecError([Problem("", f"spec file '{path}' not found", None,
                                 "check the path; shipped specs: " + (", ".join(names) or "none"))], str(path))
    shown = str(path) if p == Path(path) else str(p)
    return source_from_bytes(_read_spec_bytes(p, shown), name=shown, base_dir=base_dir or p.resolve().parent)


# ------------------------------------------------------------------------------------------------ overrides
_SEG = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_override_path(key: str) -> PathT:
    parts: list[str | int] = []
    pos = 0
    for m in _SEG.finditer(key):
        if m.start() != pos and key[pos:m.start()] != ".":
            raise ValueError(key)
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if pos != len(key) or not parts:
        raise ValueError(key)
    return tuple(parts)


def _shape(ann: Any) -> tuple[str, Any]:
    """What a schema annotation holds: ("open", None) for free-form data (`kwargs`), ("list", args) for tuples,
    ("models", [models]) for pydantic models (several for a discriminated union), ("value", ann) otherwise."""
    import types
    import typing

    origin = typing.get_origin(ann)
    if ann is Any or origin is dict or ann is dict:
        return "open", None
    if origin is typing.Annotated:
        return _shape(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        shapes = [_shape(a) for a in typing.get_args(ann) if a is not type(None)]
        models = [m for kind, ms in shapes if kind == "models" for m in ms]
        if models:
            return "models", models
        lists = [s for s in shapes if s[0] == "list"]
        return lists[0] if lists else ("value", ann)
    if origin in (tuple, list):
        return "list", typing.get_args(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "models", [ann]
    return "value", ann


def _kind_name(ann: Any) -> str:
    import typing

    if typing.get_origin(ann) is typing.Literal:
        return "a choice (" + ", ".join(map(str, typing.get_args(ann))) + ")"
    names = {int: "a number", float: "a number", bool: "true or false", str: "text"}
    args = [a for a in (typing.get_args(ann) or (ann,)) if a is not type(None)]
    return names.get(args[0], "a value") if args else "a value"


def check_override_path(path: PathT, data: Any = None) -> Problem | None:
    """A problem when `path` names nothing in the schema (`train.steps.x`, `objective.weight`, `train.lrr`), with
    a did-you-mean; None when it does. `data` (the spec so far) picks the member of a discriminated union."""
    from rewardtune.spec.schema import Spec

    ann: Any = Spec
    node = data
    for i, part in enumerate(path):
        here = dotted(path[:i])
        kind, info = _shape(ann)
        if kind == "open":
            return None
        if isinstance(part, int):
            if kind == "list":
                ann = info[0] if len(info) == 2 and info[1] is Ellipsis else (info[part] if part < len(info)
                                                                               else None)
                if ann is None:
                    return Problem(dotted(path[:i + 1]), f"{here} has {len(info)} items; there is no [{part}]", 0,
                                   f"use an index below {len(info)}")
            elif kind == "models" and isinstance(node, list):
                ann = Any  # a list where a mapping may also stand (`prompts.train: [a, b]`)
            else:
                return Problem(dotted(path[:i + 1]), f"{here} is not a list", 0, f"set {here}.KEY=VALUE, or "
                                                                                 f"{here}=VALUE")
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if kind == "list":
            return Problem(dotted(path[:i + 1]), f"{here} is a list: say which item", 0,
                           f"index it, e.g. {dotted((*path[:i], 0, *path[i:]))}")
        if kind == "value":
            return Problem(dotted(path[:i + 1]), f"{here} is {_kind_name(ann)}; it has no key '{part}'", 0,
                           f"set {here}=VALUE")
        models = info
        if len(models) > 1 and isinstance(node, dict):  # a discriminated union: the member the data names first
            tagged = [m for m in models if any(node.get(k) == f.default for k, f in m.model_fields.items()
                                               if isinstance(f.default, str) and k in ("name", "type"))]
            models = tagged + [m for m in models if m not in tagged]
        owner = next((m for m in models if part in m.model_fields), None)
        if owner is None:
            options = list(dict.fromkeys(k for m in models for k in m.model_fields))
            guess = did_you_mean(str(part), options)
            return Problem(dotted(path[:i + 1]), f"unknown key '{part}'"
                           + (f". Did you mean '{guess}'?" if guess else ""), 0,
                           f"allowed keys{' in ' + here if here else ''}: {', '.join(options)}")
        ann = owner.model_fields[part].annotation
        node = node.get(part) if isinstance(node, dict) else None
    return None


def _override_value(raw: str, path: PathT, src: SpecSource) -> Any:
    """The override's value parsed as YAML (with the spec's limits); text that is not YAML stays text."""
    if not raw.strip():
        return ""
    tmp = SpecSource(data=None, name=src.name)
    try:
        node = _compose(raw, tmp)
    except yaml.YAMLError:
        return raw
    except SpecError as e:
        tmp.problems += e.problems
    else:
        value = _build(node, tmp)
        if not tmp.problems:
            return value
    for p in tmp.problems:
        src.problems.append(Problem(dotted(path) + (("." if not p.path.startswith("[") else "") + p.path
                                                    if p.path else ""), p.message, 0, p.fix))
    src.reported.add(path)
    return _BAD


def apply_overrides(src: SpecSource, overrides: list[str] | tuple[str, ...]) -> None:
    """Apply `a.b[0].c=value` overrides (value parsed as YAML) in place; bad ones become problems."""
    for ov in overrides:
        key, eq, raw = ov.partition("=")
        if not eq or not key:
            src.problems.append(Problem(ov, "override must look like key=value, e.g. train.lr=3e-4", 0,
                                        "write dotted.path=value"))
            continue
        try:
            path = parse_override_path(key.strip())
        except ValueError:
            src.problems.append(Problem(key, f"bad override path '{key}'", 0,
                                        "use dots and [index], e.g. objective[0].weight=2"))
            continue
        problem = check_override_path(path, src.data)
        if problem is not None:
            src.problems.append(problem)
            src.reported.add(path)
            continue
        value = _override_value(raw, path, src)
        if value is _BAD:
            continue
        node = src.data
        ok = True
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    src.problems.append(Problem(dotted(path[:i + 1]), f"override index {part} is out of range", 0,
                                                f"the list has {len(node) if isinstance(node, list) else 0} "
                                                "items"))
                    ok = False
                    break
                node = node[part]
            else:
                if not isinstance(node, dict):
                    ok = False
                    src.problems.append(Problem(dotted(path[:i]), "the spec has no mapping here to set "
                                                f"'{part}' in", 0, f"fix {dotted(path[:i])} in the spec first"))
                    break
                if part not in node or node[part] is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        if not ok:
            continue
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last > len(node):
                src.problems.append(Problem(dotted(path), f"override index {last} is out of range", 0,
                                            f"the list has {len(node) if isinstance(node, list) else 0} items"))
                continue
            if last == len(node):
                node.append(value)
            else:
                node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            src.problems.append(Problem(dotted(path[:-1]), f"the spec has no mapping here to set '{last}' in", 0,
                                        f"fix {dotted(path[:-1])} in the spec first"))
            continue
        src.lines[path] = 0  # 0 marks "from the command line"


# ---------------------------------------------------------------------------------------------- validation
def _line_for(src: SpecSource, path: PathT) -> int | None:
    p = tuple(path)
    while p:
        if p in src.lines:
            return src.lines[p]  # 0 means "set on the command line"
        p = p[:-1]
    return None


def _model_at(path: PathT) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `path` (for did-you-mean on unknown keys)."""
    from rewardtune.spec import schema as S

    model: Any = S.Spec
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        f = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if f is None:
            return None
        ann = f.annotation
        candidates = models_in(ann)
        model = candidates[0] if len(candidates) == 1 else (candidates if candidates else None)
        if isinstance(model, list):
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def models_in(ann: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a type annotation (through unions, Annotated, tuples)."""
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for a in typing.get_args(ann):
        out += models_in(a)
    return out


def _problem_from_error(err: dict[str, Any], src: SpecSource) -> Problem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    path = dotted(loc)
    line = _line_for(src, loc)
    typ = err["type"]
    msg = err["msg"]
    fix = None
    if typ == "extra_forbidden":
        key = loc[-1]
        model = _model_at(loc)
        if model is not None:
            options = list(model.model_fields)
            guess = did_you_mean(str(key), options)
            msg = f"unknown key '{key}'" + (f". Did you mean '{guess}'?" if guess else "")
            fix = f"allowed keys here: {', '.join(options)}"
        else:
            msg = f"unknown key '{key}'"
    elif typ == "missing":
        msg = "required field is missing"
        fix = f"add `{loc[-1]}:`"
    elif typ in ("literal_error", "union_tag_invalid"):
        ctx = err.get("ctx", {})
        expected = ctx.get("expected") or ctx.get("expected_tags")
        given = _short(err.get("input"))
        if typ == "union_tag_invalid":
            given = ctx.get("tag")
            key = str(ctx.get("discriminator", "")).strip("'")
            path = dotted((*loc, key))
            line = _line_for(src, (*loc, key))
        if expected:
            opts = [o.strip().strip("'") for o in str(expected).replace(" or ", ",").split(",") if o.strip()]
            guess = did_you_mean(str(given), opts, cutoff=0.5)
            msg = f"'{given}' is not allowed" + (f". Did you mean '{guess}'?" if guess else "")
            fix = f"use one of: {', '.join(opts)}"
    elif typ == "union_tag_not_found":
        key = str(err.get("ctx", {}).get("discriminator", "")).strip("'")
        msg = f"missing `{key}:` that says which kind this is"
        fix = f"add `{key}:`"
    elif typ == "finite_number":
        msg = f"{msg} (got {_short(err.get('input'))})"
        fix = "NaN and infinity are not allowed: use a finite number"
    elif typ.endswith("_type") or typ.endswith("_parsing") or typ.endswith("_size"):
        msg = f"{msg} (got {_short(err.get('input'))})"
    elif typ == "value_error":
        msg = msg.removeprefix("Value error, ")
    return Problem(path, msg, line, fix)


def _short(value: Any) -> str:
    """A short repr for messages, whatever the value (deep, long, or an int too long to print)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, 60, 60, 40
    try:
        return r.repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"


_UNION_TAGS = {"lora", "full", "alignprop", "draft_k", "draft_lv", "refl", "ranked", "local", "slurm"}


def _registry_problems(raw: dict[str, Any], src: SpecSource, imports: bool = True) -> list[Problem]:
    """Reward names, presets and kwargs, checked on raw data so they are reported alongside schema errors.

    Without `imports`, `module:Class` rewards are not looked up (finding a module imports its package) and names
    the spec's `imports:` may register are not judged: both go to `src.unresolved`."""
    from rewardtune.registry import registry, unknown_reward_message

    problems: list[Problem] = []
    reg = registry()
    objective = raw.get("objective")
    if not isinstance(objective, list):
        return problems
    names = reg.names()
    for i, term in enumerate(objective):
        if not isinstance(term, dict):
            continue
        base = ("objective", i)
        kwargs = term.get("kwargs")
        if isinstance(kwargs, dict):
            for k, v in kwargs.items():
                if isinstance(v, float) and not math.isfinite(v):
                    problems.append(Problem(dotted((*base, "kwargs", k)), f"{v} is not allowed here",
                                            _line_for(src, (*base, "kwargs", k)),
                                            "NaN and infinity are not allowed: use a finite number"))
        if not isinstance(term.get("reward"), str):
            continue
        rname = term["reward"]
        if ":" in rname:
            mod = rname.partition(":")[0]
            if not imports:
                src.unresolved.append(f"{dotted((*base, 'reward'))}: {rname}")
                continue
            import importlib.util

            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                problems.append(Problem(dotted((*base, "reward")), f"module '{mod}' not found", _line_for(src, (*base, "reward")),
                                        "install the package that provides it, or list its file under `imports:`"))
            continue
        if rname not in names:
            if not imports and raw.get("imports"):
                src.unresolved.append(f"{dotted((*base, 'reward'))}: {rname} (perhaps registered by `imports:`)")
                continue
            guess = did_you_mean(rname, names)
            problems.append(Problem(dotted((*base, "reward")), unknown_reward_message(rname, names).split(" Registered")[0],
                                    _line_for(src, (*base, "reward")),
                                    f"use '{guess}'" if guess else "run `rewardtune rewards` for the list"))
            continue
        card = reg.get(rname)
        preset = term.get("preset")
        if isinstance(preset, str) and preset not in card.presets:
            guess = did_you_mean(preset, list(card.presets))
            problems.append(Problem(dotted((*base, "preset")), f"reward '{rname}' has no preset '{preset}'"
                                    + (f". Did you mean '{guess}'?" if guess else ""), _line_for(src, (*base, "preset")),
                                    f"presets of {rname}: {', '.join(card.presets)}"))
        if isinstance(kwargs, dict) and card.factory is None:
            from rewardtune.rewards._weights import secondary_weight_keys

            allowed = [*card.params, *secondary_weight_keys(card.presets)]  # e.g. pickscore's `processor`
            for k in kwargs:
                if k not in allowed:
                    guess = did_you_mean(str(k), allowed)
                    problems.append(Problem(
                        dotted((*base, "kwargs", k)), f"reward '{rname}' takes no argument '{k}'"
                        + (f". Did you mean '{guess}'?" if guess else ""), _line_for(src, (*base, "kwargs", k)),
                        f"arguments of {rname}: {', '.join(allowed) or '(none)'}"))
    return problems


def _semantic_problems(spec: Spec, src: SpecSource) -> list[Problem]:
    from rewardtune.registry import registry

    problems: list[Problem] = []
    reg = registry()

    def add(path: PathT, msg: str, fix: str | None = None) -> None:
        problems.append(Problem(dotted(path), msg, _line_for(src, path), fix))

    # term names unique
    seen: dict[str, int] = {}
    for i, t in enumerate(spec.objective):
        if t.label in seen:
            add(("objective", i, "name" if t.name else "reward"),
                f"term name '{t.label}' is used twice (also objective[{seen[t.label]}])",
                "give one of them a distinct `name:`")
        seen.setdefault(t.label, i)
    optimized = [t for t in spec.objective if t.role == "optimize"]
    if not optimized:
        add(("objective",), "no term has role 'optimize'; there is nothing to train on",
            "set `role: optimize` on at least one term")
    steps = spec.sampling.steps
    m = spec.method
    if m.name in ("alignprop", "draft_k"):
        k = getattr(m, "k", None)
        if isinstance(k, int) and k > steps:
            add(("method", "k"), f"truncation k={k} exceeds sampling.steps={steps}",
                f"use k <= {steps}, or k: all")
        rng = getattr(m, "k_range", None)
        if rng and rng[1] > steps:
            add(("method", "k_range"), f"k_range upper bound {rng[1]} exceeds sampling.steps={steps}",
                f"use an upper bound <= {steps}")
    if m.name == "refl" and m.stop_range[1] >= steps:
        add(("method", "stop_range"), f"stop_range {list(m.stop_range)} must lie within the {steps} sampling steps "
                                      f"(indices 0..{steps - 1})",
            f"e.g. stop_range: [{max(0, steps * 3 // 4 - 1)}, {steps - 1}], or raise sampling.steps")
    if m.name in GRADIENT_METHODS:
        for i, t in enumerate(spec.objective):
            if t.role != "optimize" or t.combine == "assemble_ranked":
                continue
            try:
                card = reg.get(t.reward)
            except UnknownRewardError:  # left unresolved (validated without imports)
                continue
            if not card.differentiable:
                add(("objective", i, "combine"),
                    f"reward '{t.reward}' has no gradient, so it cannot be optimized with `combine: weighted_sum` "
                    f"under the gradient method '{m.name}'",
                    "set `combine: assemble_ranked`, `role: monitor`, or use `method: {name: ranked}`")
        if all(t.combine == "assemble_ranked" and not _differentiable(reg, t.reward) for t in optimized) and optimized:
            add(("objective",), f"method '{m.name}' needs at least one differentiable optimized term to give a "
                                "gradient", "add a differentiable reward, or use `method: {name: ranked}`")
    # model family
    fam, sp = spec.model.family, spec.sampling
    flow = fam in FLOW_FAMILIES
    if sp.scheduler != "auto" and (sp.scheduler == "flow_euler") != flow:
        add(("sampling", "scheduler"), f"model.family '{fam}' samples with {'flow_euler' if flow else 'ddim'}, not "
                                       f"{sp.scheduler}", "set sampling.scheduler: auto")
    if flow and sp.eta > 0:
        add(("sampling", "eta"), f"model.family '{fam}' is a flow-matching model: its Euler sampler is "
                                 f"deterministic, and eta={sp.eta} has no meaning there", "set sampling.eta: 0")
    if flow and sp.resolution % 16:
        add(("sampling", "resolution"), f"model.family '{fam}' needs a resolution that is a multiple of 16 (its "
                                        f"latents are cut into 2x2 patches); got {sp.resolution}",
            f"use {sp.resolution - sp.resolution % 16 or 16} or {sp.resolution + 16 - sp.resolution % 16}")
    # engine checks
    g = spec.sampling.images_per_prompt
    if spec.train.batch_size % g:
        add(("train", "batch_size"), f"train.batch_size={spec.train.batch_size} is not a multiple of "
                                     f"sampling.images_per_prompt={g}",
            f"use a batch_size that is a multiple of {g}")
    for i, t in enumerate(spec.objective):
        if t.combine == "assemble_ranked" and t.role == "optimize" and t.weight <= 0:
            add(("objective", i, "weight"), f"assemble_ranked term '{t.label}' needs a positive weight "
                                            f"(got {t.weight}); ranks already say which way is better",
                "use a weight > 0, or `role: monitor`")
    if m.name in GRADIENT_METHODS and optimized and not all(
            t.combine == "assemble_ranked" and not _differentiable(reg, t.reward) for t in optimized) and not any(
            t.combine == "weighted_sum" and _differentiable(reg, t.reward) for t in optimized):
        add(("objective",), f"method '{m.name}' takes its gradient from differentiable `combine: weighted_sum` "
                            "terms, and there is none (assemble_ranked terms only weight the samples)",
            "set `combine: weighted_sum` on a differentiable term, or use `method: {name: ranked}`")
    if m.name in GRADIENT_METHODS and g == 1 and any(
            t.combine == "assemble_ranked" and t.role == "optimize" for t in spec.objective):
        add(("sampling", "images_per_prompt"), "assemble_ranked terms under a gradient method rank the images of "
                                               "each prompt, but sampling.images_per_prompt is 1 (nothing to rank)",
            "set sampling.images_per_prompt to 2 or more")
    # the eval metric that picks the exported weights
    sel, lg = spec.logging.select_by, spec.logging
    if sel is not None:
        labels = [*spec.term_labels(), "objective"]
        if sel not in labels:
            guess = did_you_mean(sel, labels)
            add(("logging", "select_by"), f"'{sel}' is not a term of the objective"
                + (f". Did you mean '{guess}'?" if guess else ""),
                f"use one of: {', '.join(labels)}")
        elif spec.train.steps < 2:
            add(("logging", "select_by"), "logging.select_by picks among mid-run evals, and a run of "
                                          f"train.steps={spec.train.steps} has none", "set select_by: null")
        elif not lg.images_every or lg.images_every >= spec.train.steps:
            add(("logging", "select_by"), f"logging.select_by picks among the evals every logging.images_every "
                                          f"steps, and with images_every={lg.images_every} and train.steps="
                                          f"{spec.train.steps} the last step's is the only one",
                f"set logging.images_every between 1 and {spec.train.steps - 1}, or select_by: null")
    # prompts files exist
    for which in ("train", "eval"):
        ps = getattr(spec.prompts, which)
        if ps.file is not None:
            p = Path(ps.file)
            p = p if p.is_absolute() else src.base_dir / p
            if not p.exists():
                add(("prompts", which, "file"), f"prompts file '{ps.file}' not found (looked at {p})",
                    "fix the path (relative to the spec file)")
        if ps.builtin is not None:
            from rewardtune.prompts import BUILTIN_SETS

            if ps.builtin not in BUILTIN_SETS:
                guess = did_you_mean(ps.builtin, list(BUILTIN_SETS))
                add(("prompts", which, "builtin"), f"unknown built-in prompt set '{ps.builtin}'"
                    + (f". Did you mean '{guess}'?" if guess else ""),
                    f"built-in sets: {', '.join(BUILTIN_SETS)}")
    if m.name == "refl" and m.pretrain is not None:
        p = Path(m.pretrain.data)
        p = p if p.is_absolute() else src.base_dir / p
        if not p.exists():
            add(("method", "pretrain", "data"), f"pretraining data '{m.pretrain.data}' not found (looked at {p})",
                "fix the path (relative to the spec file)")
    return problems


def _differentiable(reg, name: str) -> bool:
    try:
        return reg.get(name).differentiable
    except UnknownRewardError:  # left unresolved (validated without imports): do not judge it
        return True


def _run_imports(items: list[Any], src: SpecSource) -> list[Problem]:
    """Import the spec's `imports:`, one problem per item that fails (an exception, or a `sys.exit()`)."""
    from rewardtune.registry import import_extra

    problems = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            continue  # the schema reports it
        line = _line_for(src, ("imports", i))
        try:
            import_extra([item], src.base_dir)
        except SystemExit as e:  # a file that exits must not end validation (with its exit code)
            problems.append(Problem(f"imports[{i}]", f"importing '{item}' called sys.exit({e.code!r})", line,
                                    "an imported file should only define and register rewards: remove the exit"))
        except UsageError as e:
            problems.append(Problem(f"imports[{i}]", str(e), line, None))
        except Exception as e:  # noqa: BLE001 - the user's code may raise anything; it is reported, not swallowed
            problems.append(Problem(f"imports[{i}]", f"importing '{item}' failed: {type(e).__name__}: {e}", line,
                                    "fix the error in that file (run it with python to see the traceback)"))
    return problems


def validate_source(src: SpecSource, *, imports: bool = True) -> Spec:
    """Validate raw data; raise SpecError with every problem at once.

    `imports=False` runs no code from the spec: its `imports:` are not imported and `module:Class` rewards are not
    looked up; the names this leaves unchecked are listed in `src.unresolved`."""
    problems = list(src.problems)
    raw = src.data if isinstance(src.data, dict) else {}
    items = raw.get("imports")
    if isinstance(items, list) and items:
        if imports:
            problems += _run_imports(items, src)
        else:
            src.unresolved += [f"imports[{i}]: {x}" for i, x in enumerate(items) if isinstance(x, str)]
    if "objective" in raw and isinstance(raw["objective"], list) and not raw["objective"]:
        problems.append(Problem("objective", "the objective is empty", _line_for(src, ("objective",)),
                                "add at least one term, e.g. `- reward: pickscore`"))
    spec = None
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            if err["type"] == "too_short" and err["loc"] == ("objective",):
                continue  # reported above with a better message
            if any(tuple(err["loc"][:len(p)]) == p for p in src.reported):
                continue  # a value refused while reading it: already reported
            problems.append(_problem_from_error(err, src))
    problems += _registry_problems(raw, src, imports)
    if spec is not None and not problems:
        problems += _semantic_problems(spec, src)
    if problems:
        # stable order: by line, then path
        problems.sort(key=lambda p: (p.line or 10**9, p.path))
        raise SpecError(problems, src.name)
    assert spec is not None
    return spec


def load_spec(path_or_data: str | Path | dict[str, Any] | Spec, overrides: list[str] | tuple[str, ...] = (),
              tiny: bool = False, *, imports: bool = True, base_dir: str | Path | None = None) -> Spec:
    """Load, override and validate a spec from a path, a dict or a Spec. Raises SpecError.

    A spec is code, like a Python config: its `imports:` are imported and `module:Class` rewards looked up (which
    imports their package). `imports=False` does neither; `unresolved_names(spec)` then lists what went
    unchecked. `base_dir`: resolve a spec file's relative paths against this folder instead of the file's own."""
    if isinstance(path_or_data, Spec):
        src = SpecSource(data=path_or_data.model_dump(mode="json"), name=spec_origin(path_or_data),
                         base_dir=spec_base_dir(path_or_data))
    elif isinstance(path_or_data, dict):
        import copy

        src = SpecSource(data=copy.deepcopy(path_or_data), name="<dict>")
    else:
        src = read_spec_source(path_or_data, Path(base_dir) if base_dir is not None else None)
    if overrides:
        apply_overrides(src, list(overrides))
    spec = validate_source(src, imports=imports)
    spec = spec.model_copy(update={})  # frozen copy
    object.__setattr__(spec, "_base_dir", src.base_dir)
    object.__setattr__(spec, "_origin", src.name)
    object.__setattr__(spec, "_unresolved", tuple(src.unresolved))
    object.__setattr__(spec, "_lines", dict(src.lines))
    return to_tiny(spec) if tiny else spec


def spec_base_dir(spec: Spec) -> Path:
    """Directory that relative paths in the spec (prompt files, data) are resolved against."""
    return getattr(spec, "_base_dir", None) or Path.cwd()


def spec_origin(spec: Spec) -> str:
    """Where the spec was loaded from (its file), for messages."""
    return getattr(spec, "_origin", None) or f"<spec {spec.name}>"


def spec_problem(spec: Spec, path: PathT, message: str, fix: str | None = None) -> Problem:
    """A Problem at `path` of a loaded spec, with the YAML line (or 0: the command line) it came from."""
    src = SpecSource(data=None, lines=getattr(spec, "_lines", None) or {})
    return Problem(dotted(path), message, _line_for(src, path), fix)


def unresolved_names(spec: Spec) -> tuple[str, ...]:
    """What `load_spec(..., imports=False)` left unchecked: `imports:` items and rewards only code could
    resolve, each as `path: name`."""
    return getattr(spec, "_unresolved", ())


# ------------------------------------------------------------------------------------------------------ tiny
TINY_PIPELINE = "zoo:sd1"
#: model.family -> its tiny twin (same pipeline class and architecture, random weights, built offline)
TINY_PIPELINES = {"sd1": "zoo:sd1", "sd2": "zoo:sd1", "sdxl": "zoo:sdxl", "sd3": "zoo:sd3", "flux": "zoo:flux"}
TINY_RESOLUTION = 16


def to_tiny(spec: Spec) -> Spec:
    """Swap every model of a spec for its tiny twin of the same family (offline, seconds on a CPU)."""
    from rewardtune.registry import registry

    reg = registry()
    terms = []
    for t in spec.objective:
        try:
            card_presets = reg.get(t.reward).presets
        except UnknownRewardError:  # left unresolved by a validation without imports: nothing to swap
            card_presets = {}
        preset = "tiny" if "tiny" in card_presets else t.preset
        if "tiny" in card_presets:  # the twin's own weights: secondary weights given for the real model go too
            from rewardtune.rewards._weights import secondary_weight_keys

            drop = secondary_weight_keys(card_presets)
            t = t.model_copy(update={"kwargs": {k: v for k, v in t.kwargs.items() if k not in drop}})
        terms.append(t.model_copy(update={"preset": preset, "dtype": None, "weights": None}))
    family = spec.model.family
    model = spec.model.model_copy(update={"pretrained": TINY_PIPELINES[family], "revision": None, "variant": None,
                                          "family": family, "dtype": "float32"})
    sampling = spec.sampling.model_copy(update={"resolution": TINY_RESOLUTION})
    train = spec.train.model_copy(update={"mixed_precision": "no"})
    out = spec.model_copy(update={"model": model, "objective": tuple(terms), "sampling": sampling, "train": train})
    for attr in ("_base_dir", "_origin", "_unresolved", "_lines"):
        if hasattr(spec, attr):
            object.__setattr__(out, attr, getattr(spec, attr))
    return out
