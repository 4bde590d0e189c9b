"""Reading the examples in Markdown files: fenced blocks, the answers they show, and comparing
those answers with the service's (the rules are in tests/test_docs.py's docstring)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL_LANGUAGES = {"sh", "bash", "shell", "zsh", "console", "shell-session", ""}
FLAGS = {"no-run"}

ELLIPSIS = "\u2026"
ANY = "\u2026any"  # a bare `…` value
MORE = "\u2026more"  # a bare `…` member or last element: more than is shown

FENCE = re.compile(r"^```(?P<info>[^`\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
EXPECTATION = re.compile(r"^\s*#\s*→\s*(?P<status>\d{3})\b\s*(?P<body>.*)$")
CURL = re.compile(r"(?:^|[\s;&|(])curl\s")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language and flags (```sh no-run), and its text."""

    path: Path
    line: int
    language: str
    flags: frozenset[str]
    text: str
    end: int  # offset just past the closing fence

    @property
    def where(self) -> str:
        """`file:line` of the opening fence, for failure messages."""
        return self.at(-1)

    def at(self, index: int) -> str:
        """`file:line` of the block's line `index` (0-based)."""
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line + 1 + index}"

    @property
    def runs(self) -> bool:
        return self.language == "sh" and "no-run" not in self.flags


@dataclass(frozen=True)
class Expected:
    """An answer the docs show for one `curl`: its status (None: any 2xx) and body (None: any)."""

    status: int | None
    body: object | None
    source: str


@dataclass
class Example:
    """A block to run, with the answers it documents."""

    block: Block
    curls: int
    expected: dict[int, Expected] = field(default_factory=dict)  # by curl, counted from 1


def fenced_blocks(path: Path) -> list[Block]:
    """Every ``` block of a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        words = match["info"].split()
        blocks.append(
            Block(
                path=path,
                line=text.count("\n", 0, match.start()) + 1,
                language=words[0] if words else "",
                flags=frozenset(words[1:]),
                text=match["body"],
                end=match.end(),
            )
        )
    return blocks


def documented_json(text: str) -> object:
    """JSON in which a bare `…` stands for any value, or for more members or elements."""
    out: list[str] = []
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            in_string = not (char == '"' and not escaped)
            escaped = char == "\\" and not escaped
            out.append(char)
            continue
        if char == ELLIPSIS:
            previous = "".join(out).rstrip()[-1:]
            at_member = stack and previous in ("{", "[", ",")
            if at_member and stack[-1] == "{":
                out.append(f'"{MORE}": null')
            elif at_member:
                out.append(f'"{MORE}"')
            else:
                out.append(f'"{ANY}"')
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
        out.append(char)
    return json.loads("".join(out))


def mismatches(expected: object, actual: object, where: str = "body") -> list[str]:
    """How `actual` departs from what the docs show (empty when it matches)."""
    if expected == ANY:
        return []
    if isinstance(expected, dict):
        return _object_mismatches(expected, actual, where)
    if isinstance(expected, list):
        return _array_mismatches(expected, actual, where)
    if isinstance(expected, str) and ELLIPSIS in expected:
        pattern = ".*".join(re.escape(part) for part in expected.split(ELLIPSIS))
        if isinstance(actual, str) and re.fullmatch(pattern, actual, re.DOTALL):
            return []
    elif type(expected) is type(actual) and expected == actual:
        return []
    return [f"{where}: the docs show {expected!r}, the service answered {actual!r}"]


def _object_mismatches(expected: dict[str, object], actual: object, where: str) -> list[str]:
    """The shown fields must match; others are allowed only after a bare `…` member."""
    if not isinstance(actual, dict):
        return [f"{where}: the docs show an object, the service answered {actual!r}"]
    problems = []
    for key, value in expected.items():
        if key == MORE:
            continue
        if key not in actual:
            problems.append(f"{where}.{key}: shown in the docs, missing from the answer")
        else:
            problems += mismatches(value, actual[key], f"{where}.{key}")
    extra = sorted(set(actual) - set(expected))
    if MORE not in expected and extra:
        problems.append(f"{where}: answered but not shown (show them, or end with …): {extra}")
    return problems


def _array_mismatches(expected: list[object], actual: object, where: str) -> list[str]:
    """Element by element, in order; more elements only after a last bare `…`."""
    if not isinstance(actual, list):
        return [f"{where}: the docs show an array, the service answered {actual!r}"]
    more = bool(expected) and expected[-1] == MORE
    shown = expected[:-1] if more else expected
    if len(actual) < len(shown) or (not more and len(actual) != len(shown)):
        return [f"{where}: the docs show {len(shown)} elements, the answer has {len(actual)}"]
    problems = []
    for index, value in enumerate(shown):
        problems += mismatches(value, actual[index], f"{where}[{index}]")
    return problems


def _expectation_lines(lines: list[str], start: int) -> tuple[str, int]:
    """The `# → …` comment at `start` with its continuation lines, and the line after it."""
    text = EXPECTATION.match(lines[start])
    assert text is not None
    parts = [text["body"]]
    index = start + 1
    depth = _depth(parts[0])
    while depth > 0 and index < len(lines) and lines[index].lstrip().startswith("#"):
        continuation = lines[index].lstrip()[1:]
        parts.append(continuation)
        depth += _depth(continuation)
        index += 1
    return "\n".join(parts), index


def _depth(text: str) -> int:
    """Brackets opened minus closed outside strings: whether a shown body goes on a line more."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    return sum(without_strings.count(c) for c in "{[") - sum(without_strings.count(c) for c in "}]")


def parse_example(block: Block, following: Block | None) -> Example:
    """The block's `curl` commands and the answers shown for them (comments, a json block)."""
    lines = block.text.splitlines()
    example = Example(block=block, curls=0)
    index = 0
    while index < len(lines):
        line = lines[index]
        shown = EXPECTATION.match(line)
        if shown:
            where = block.at(index)
            body_text, index = _expectation_lines(lines, index)
            assert example.curls, f"{where}: `# →` must follow a curl command"
            assert example.curls not in example.expected, f"{where}: two answers for one curl"
            body = _shown_json(body_text, where) if body_text.strip() else None
            example.expected[example.curls] = Expected(int(shown["status"]), body, where)
            continue
        if not line.lstrip().startswith("#"):
            example.curls += len(CURL.findall(line))
        index += 1
    if following is not None:
        assert example.curls, f"{following.where}: a json answer after a block without curl"
        stated = example.expected.get(example.curls)
        status = None if stated is None else stated.status
        assert stated is None or stated.body is None, f"{following.where}: two bodies for one curl"
        example.expected[example.curls] = Expected(
            status, _shown_json(following.text, following.where), following.where
        )
    return example


def _shown_json(text: str, where: str) -> object:
    try:
        return documented_json(text)
    except ValueError as exc:
        raise AssertionError(f"{where}: the answer shown is not JSON (with `…`): {exc}") from None


def examples_of(path: Path) -> list[Example]:
    """The file's blocks to run, in order; fails on a shell block neither run nor marked."""
    blocks = fenced_blocks(path)
    text = path.read_text(encoding="utf-8")
    examples = []
    for index, block in enumerate(blocks):
        if block.language in SHELL_LANGUAGES and (
            block.language != "sh" or not block.flags <= FLAGS
        ):
            raise AssertionError(
                f"{block.where}: a shell block must be ```sh (run by the tests) or ```sh no-run"
                f" (shown only), not ```{' '.join([block.language, *sorted(block.flags)])}"
            )
        if not block.runs:
            continue
        if "billing.internal" in block.text:
            raise AssertionError(f"{block.where}: call the service at $BILLING_URL")
        after = blocks[index + 1] if index + 1 < len(blocks) else None
        follows = (
            after is not None
            and after.language == "json"
            and text[block.end : text.find("```", block.end + 1)].strip() == ""
        )
        examples.append(parse_example(block, after if follows else None))
    return examples


@dataclass(frozen=True)
class Answer:
    """What one `curl` of an example got back."""

    status: int
    body: bytes


def read_answers(folder: Path) -> list[Answer]:
    """The answers the `curl` wrapper kept, in the order the commands ran."""
    count = len(list(folder.glob("*.status")))
    return [
        Answer(int((folder / f"{n}.status").read_text()), (folder / f"{n}.body").read_bytes())
        for n in range(1, count + 1)
    ]


def check_answers(example: Example, answers: list[Answer]) -> list[str]:
    """Every way the service's answers depart from those the example shows."""
    where = example.block.where
    if len(answers) != example.curls:
        return [f"{where}: {example.curls} curl commands in the text, {len(answers)} were run"]
    problems = []
    for number, answer in enumerate(answers, start=1):
        shown = example.expected.get(number)
        source = where if shown is None else shown.source
        if shown is None or shown.status is None:
            if not 200 <= answer.status < 300:
                problems.append(f"{source}: curl {number} of the block answered {answer.status},"
                                f" not 2xx: {answer.body[:500]!r}")  # fmt: skip
        elif answer.status != shown.status:
            problems.append(f"{source}: the docs show {shown.status}, the service answered"
                            f" {answer.status}: {answer.body[:500]!r}")  # fmt: skip
        if shown is not None and shown.body is not None:
            try:
                actual = json.loads(answer.body)
            except ValueError:
                problems.append(f"{source}: the answer is not JSON: {answer.body[:500]!r}")
                continue
            problems += [f"{source}: {p}" for p in mismatches(shown.body, actual)]
    return problems
