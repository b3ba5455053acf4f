"""The documentation says what the code does: generated tables match their source, every setting,
environment variable and quarantine reason of the code is documented, links lead somewhere, and
README.md stays short. Pure Python: no Spark, no services."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from music_recs import schema, settings
from music_recs.params import params_markdown

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"
DATA_FORMAT = DOCS / "data-format.md"
SETTINGS_SOURCE = REPO / "src" / "music_recs" / "settings.py"
INGEST_SOURCE = REPO / "spark_jobs" / "ingest.py"
LANDING_SOURCE = REPO / "spark_jobs" / "lib" / "landing.py"
README_MAX_LINES = 260
# Every page a reader is sent to; their relative links must lead to files.
PAGES = sorted([README, REPO / "CONTRIBUTING.md", REPO / "infra" / "DEPLOYMENT.md", REPO / "bench" / "README.md",
                REPO / "bench" / "RESULTS.md", *DOCS.glob("*.md")])
PARAMS_BEGIN, PARAMS_END = "<!-- params:begin", "<!-- params:end -->"


def generated_params_table(page: str) -> str:
    """The text between the params markers of the configuration page (the marker lines excluded)."""
    assert page.count(PARAMS_BEGIN) == 1 and page.count(PARAMS_END) == 1, "the params markers must appear once"
    inside = page.split(PARAMS_BEGIN, 1)[1].split(PARAMS_END, 1)[0]
    return inside.split("\n", 1)[1]  # drop the rest of the begin marker's line


def test_configuration_page_holds_exactly_the_generated_params_table():
    table = generated_params_table(CONFIGURATION.read_text())
    assert table == params_markdown(), (
        "docs/configuration.md's params table differs from src/music_recs/params.py: replace the lines "
        "between the params markers with the output of `python -m music_recs.params`")


def test_the_params_table_has_a_row_per_param_with_its_default():
    from music_recs.params import DEFAULTS, FIELDS

    rows = [line for line in params_markdown().splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `(\w+)`", row).group(1) for row in rows] == list(FIELDS)
    assert "strategy" in FIELDS and "| `strategy` | `cg` |" in params_markdown()
    assert DEFAULTS["rank"] is None and "| `rank` | empty |" in params_markdown()


def test_every_deployment_setting_is_a_row_of_the_configuration_page():
    page = CONFIGURATION.read_text()
    fields = [f.name for f in dataclasses.fields(settings.DeploymentSettings)]
    assert "raw_bucket" in fields and len(fields) >= 16
    missing = [name for name in fields if not re.search(rf"^\| `{name}` \|", page, re.M)]
    assert missing == [], f"settings missing from the table of docs/configuration.md: {missing}"


def environment_variables() -> set[str]:
    """Every MUSIC_RECS_* variable settings.py names: literally, as ENV_PREFIX + a name, through its
    cluster look-up, or as a DagSettings field."""
    source = SETTINGS_SOURCE.read_text()
    names = set(re.findall(r"\b(MUSIC_RECS_[A-Z0-9_]*[A-Z0-9])\b(?![_{])", source))
    names |= {settings.ENV_PREFIX + n for n in re.findall(r"\{ENV_PREFIX\}([A-Z0-9_]*[A-Z0-9])\b", source)}
    names |= {settings.ENV_PREFIX + n for n in re.findall(r"\benv\(\"([A-Z0-9_]+)\"", source)}
    names |= {settings.ENV_PREFIX + f.name.upper() for f in dataclasses.fields(settings.DagSettings)}
    return names


def test_every_music_recs_variable_of_the_settings_module_is_in_the_configuration_page():
    names = environment_variables()
    assert {"MUSIC_RECS_CLUSTER_NODES", "MUSIC_RECS_S3_PORT", "MUSIC_RECS_TASK_RETRIES",
            "MUSIC_RECS_SPARK_CLASS_ARCHIVE_DIR", "MUSIC_RECS_JARS_DIR"} <= names
    page = CONFIGURATION.read_text()
    missing = sorted(n for n in names if not re.search(rf"\b{n}\b", page))
    assert missing == [], f"environment variables missing from docs/configuration.md: {missing}"


def _string_constants(path: Path, name_filter) -> dict[str, str]:
    """Module-level ``NAME = "value"`` assignments of ``path`` whose name passes ``name_filter``."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name) and name_filter(target.id, node.value.value):
                    found[target.id] = node.value.value
    return found


# The reason templates of ingest.py and the columns each is formatted with there.
REASON_TEMPLATES = {"missing_{}": schema.REQUIRED_LOG_COLUMNS, "malformed_{}": schema.ID_COLUMNS}


def quarantine_reasons() -> set[str]:
    """Every quarantine reason the code can write: ingest's ``R_*`` constants (templates expanded
    with their columns) and the landing reader's reason constants (lower-case identifiers)."""
    ingest = _string_constants(INGEST_SOURCE, lambda name, value: name.startswith("R_"))
    landing = _string_constants(LANDING_SOURCE, lambda name, value: re.fullmatch(r"[a-z][a-z0-9_]*", value))
    reasons = set()
    for value in (*ingest.values(), *landing.values()):
        if "{" in value:
            assert value in REASON_TEMPLATES, f"new reason template {value!r}: add its columns to REASON_TEMPLATES"
            reasons |= {value.format(col) for col in REASON_TEMPLATES[value]}
        else:
            reasons.add(value)
    return reasons


def test_every_quarantine_reason_is_a_row_of_the_data_format_page():
    reasons = quarantine_reasons()
    assert {"not_utf8", "gzip_stream_broken", "not_json_object", "missing_event_id", "malformed_artist_id",
            "ts_outside_day", "ms_played_out_of_range", "wrong_field_count"} <= reasons
    page = DATA_FORMAT.read_text()
    missing = sorted(r for r in reasons if not re.search(rf"^\| `{r}` \|", page, re.M))
    assert missing == [], f"quarantine reasons missing from the table of docs/data-format.md: {missing}"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


def test_readme_keeps_the_test_command_ci_runs():
    assert "bash infra/local/test.sh" in (REPO / ".ci" / "run").read_text()
    assert "bash infra/local/test.sh" in README.read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} +(.+?)\s*$", text, re.M)}


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` (outside code blocks) whose file, or heading, does not exist."""
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_to_files_and_headings(page):
    assert page.exists(), page
    assert broken_links(page) == []


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md) [ok](there.md#a-heading) [web](https://example.com) `[code](nowhere.md)`\n"
                    "[gone](nowhere.md) [bad anchor](there.md#no-such-heading)\n")
    assert broken_links(page) == ["nowhere.md", "there.md#no-such-heading"]


def test_the_pages_exist():
    for name in ("data-format.md", "outputs.md", "configuration.md", "operations.md", "how-it-works.md"):
        assert (DOCS / name).exists(), name
    assert (REPO / "CONTRIBUTING.md").exists() and (REPO / "infra" / "DEPLOYMENT.md").exists()
