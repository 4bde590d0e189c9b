"""The examples in README.md and docs/*.md, run against a live service and held to what they show.

Every fenced block names its language. A ```sh block is run; a ```sh no-run block is shown only
(`make dev`, `docker run`, long benchmarks, commands that need data the example cannot make), and
any other shell fence (```bash, ```console, an unnamed fence) fails this test, so no command is
skipped silently. Per file, the ```sh blocks run in order, each as one `bash` script with
`set -euo pipefail`, in a scratch directory holding a copy of `catalog.example.yaml` (as if in a
clone of the repository), against one `billing-service serve` with Stripe answered by the fake
Stripe server. Each file starts from empty tables, the example catalog applied and synced, and:

- `$BILLING_URL`: the service's base URL (readers set it to theirs, e.g. http://127.0.0.1:8000);
- `$ADMIN_KEY`, `$KEY`, `$USAGE_KEY`: real keys with the `admin`, `billing` and `usage` scopes;
- `billing-service` on PATH, with the service's database and Stripe settings, so CLI examples run.

A command that exits non-zero fails the test. Answers of `curl` are captured (output and piping
still work as usual; an example must not pass its own `-o` or `-w`) and compared with what the
docs show:

- `# → 201 {...}` on the lines after a `curl` command (in the same block) states its status
  and body; the body may continue on further `#` lines and may be left out (`# → 204`).
- A ```json block right after a ```sh block is the body of that block's last `curl`.
- A `curl` with no stated answer must answer 2xx.

Bodies are compared as JSON, with `…` standing for what varies:

- a concrete value (number, string, true/false/null) must be equal, type included;
- a string holding `…` matches any string of that form (`"cs_…"`, `"https://checkout.stripe.com/…"`);
- a bare `…` value (`"expires_at": …`) matches any value;
- an object lists exactly the fields of the answer, unless a bare `…` member (`{"id": "…", …}`)
  says there are more; an array lists every element in order, unless a last `…` says there are
  more.

docs/architecture.md ("The docs are tested") has the same rules for contributors.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from billing_service.catalog_spec import load_catalog_yaml
from billing_service.config import Settings
from billing_service.resources import example_catalog_path
from billing_service.services.api_keys import Scope
from tests.conftest import APP_HOST, issue_key
from tests.doc_examples import (
    ROOT,
    Answer,
    Example,
    check_answers,
    documented_json,
    examples_of,
    fenced_blocks,
    mismatches,
    read_answers,
)
from tests.live_service import LiveService
from tests.live_service import live_service as serve_live
from tests.stripe_server import sync_example_catalog

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_SECONDS = 120

# Runs before each block: strict bash, and a `curl` that keeps each answer for the comparison.
PRELUDE = r"""set -euo pipefail
curl() {
  local n
  n=$(( $(find "$DOCS_ANSWERS" -name '*.status' | wc -l) + 1 ))
  : > "$DOCS_ANSWERS/$n.body"  # curl writes no file for an empty body (204, 304)
  command curl -sS -o "$DOCS_ANSWERS/$n.body" -w '%{http_code}' "$@" > "$DOCS_ANSWERS/$n.status"
  cat "$DOCS_ANSWERS/$n.body"
}
"""


async def run_example(example: Example, env: dict[str, str], folder: Path) -> list[Answer]:
    """Run the block as a reader would paste it; fails with its output if a command fails."""
    answers = folder / "answers"
    answers.mkdir(parents=True)
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", PRELUDE + example.block.text,
        cwd=folder.parent, env=env | {"DOCS_ANSWERS": str(answers)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), BLOCK_SECONDS)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)  # bash and whatever it started
        await process.wait()
        raise AssertionError(
            f"{example.block.where}: still running after {BLOCK_SECONDS} s; mark a block that"
            " serves or waits ```sh no-run"
        ) from None
    assert process.returncode == 0, (
        f"{example.block.where}: exited {process.returncode}:\n{output.decode()[-4000:]}"
    )
    return read_answers(answers)


@pytest.fixture(scope="module")
async def live_service(database_url: str) -> AsyncIterator[LiveService]:
    """One `billing-service serve` for every file, its Stripe calls answered by the fake Stripe;
    tables are emptied between files, so no background work may hold them meanwhile."""
    async with serve_live(database_url, BILLING_CORS_ORIGINS=f"https://{APP_HOST}") as service:
        yield service


async def reader_env(
    service: LiveService, settings: Settings, pool: asyncpg.Pool, workdir: Path
) -> dict[str, str]:
    """What a reader has when following a doc: the example catalog live, keys, the URL, PATH."""
    await sync_example_catalog(
        pool,
        settings.model_copy(
            update={
                "stripe_secret_key": SecretStr("sk_test_fake"),
                "stripe_api_base": service.stripe.url,
            }
        ),
    )
    shutil.copy(example_catalog_path(), workdir / "catalog.example.yaml")
    return service.env | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "BILLING_URL": service.base,
        "ADMIN_KEY": await issue_key(pool, Scope.ADMIN),
        "KEY": await issue_key(pool, Scope.BILLING),
        "USAGE_KEY": await issue_key(pool, Scope.USAGE),
    }


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
async def test_the_examples_of_each_doc_run_and_answer_as_shown(
    path: Path,
    live_service: LiveService,
    settings: Settings,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """Every ```sh block of the file succeeds, and every answer it shows is the service's."""
    examples = examples_of(path)
    if not examples:
        return
    env = await reader_env(live_service, settings, pool, tmp_path)
    problems = []
    for number, example in enumerate(examples):
        answers = await run_example(example, env, tmp_path / f"block{number}")
        problems += check_answers(example, answers)
    assert not problems, "\n".join(problems)


def test_the_catalog_shown_in_the_docs_is_a_valid_catalog() -> None:
    """The ```yaml catalog in docs/catalog.md loads, cross-checks included."""
    blocks = [b for b in fenced_blocks(ROOT / "docs" / "catalog.md") if b.language == "yaml"]
    assert blocks
    for block in blocks:
        load_catalog_yaml(block.text)


@pytest.mark.parametrize("fence", ["```bash", "```console", "```", "```sh norun"])
def test_a_shell_block_neither_run_nor_marked_is_refused(fence: str, tmp_path: Path) -> None:
    """A ```bash, ```console, unnamed or mistyped fence fails instead of being skipped."""
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Doc\n\n{fence}\nmake dev\n```\n\n```sh no-run\nmake dev\n```\n")
    with pytest.raises(AssertionError, match="```sh no-run"):
        examples_of(doc)
    doc.write_text("```sh no-run\nmake dev\n```\n\n```text\nmake dev\n```\n")
    assert examples_of(doc) == []


def test_documented_json_placeholders_match_as_the_rules_say() -> None:
    """`…` in strings, as a value and as a member or element; exact fields otherwise."""
    shown = documented_json('{"id": "cs_…", "at": …, "n": 1, "list": [1, …], "more": {"a": 1, …}}')
    actual = {"id": "cs_123", "at": None, "n": 1, "list": [1, 2], "more": {"a": 1, "b": 2}}
    assert mismatches(shown, actual) == []
    assert mismatches(shown, actual | {"id": "pi_1"})
    assert mismatches(shown, actual | {"n": True})
    assert mismatches(shown, actual | {"extra": 0})
    assert mismatches(shown, {k: v for k, v in actual.items() if k != "at"})
    assert mismatches(shown, actual | {"list": []})
    assert mismatches(documented_json('{"n": 1}'), {"n": 1.0})


def test_shown_answers_attach_to_their_curl_and_are_compared(tmp_path: Path) -> None:
    """`# →` belongs to the curl before it, a json block to the last; others must be 2xx."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```sh\n"
        "curl $BILLING_URL/a   # no answer shown: 2xx\n"
        "curl -X POST $BILLING_URL/b \\\n  -d '{}'\n"
        '# → 201 {"id": "k_…",\n#        "n": 1}\n'
        "curl $BILLING_URL/c\n"
        "# → 404\n"
        '```\n\n```json\n{"type": "…:not-found", …}\n```\n'
    )
    [example] = examples_of(doc)
    assert example.curls == 3
    assert sorted(example.expected) == [2, 3]
    assert example.expected[3].status == 404

    def answer(status: int, body: str) -> Answer:
        return Answer(status, body.encode())

    good = [answer(200, "{}"), answer(201, '{"id": "k_1", "n": 1}'),
            answer(404, '{"type": "urn:x:not-found", "status": 404}')]  # fmt: skip
    assert check_answers(example, good) == []
    assert check_answers(example, good[:2])  # a curl that did not run
    assert check_answers(example, [answer(500, "{}"), *good[1:]])
    assert check_answers(example, [good[0], answer(201, '{"id": "k_1", "n": 2}'), good[2]])
    assert check_answers(example, [*good[:2], answer(410, good[2].body.decode())])
