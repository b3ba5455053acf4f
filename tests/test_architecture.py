"""Where code runs, checked against the code: the plugin loader, import directions, the environment."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "src" / "music_recs"
AIRFLOW_SIDE = REPO / "plugins" / "music_recs_airflow"
SPARK_SIDE = REPO / "spark_jobs"
DEV = REPO / "src" / "music_recs_dev"
SETTINGS_MODULE = CORE / "settings.py"

# Run Airflow's plugin manager in a fresh interpreter and list the project modules it left in
# sys.modules under a bare stem (how its loader names what it executes).
PLUGIN_PROBE = """
import json, sys
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
stems = set(json.loads(sys.argv[1]))
print(json.dumps({"bare": sorted(stems & set(sys.modules)), "errors": plugins_manager.get_import_errors()}))
"""


def project_stems() -> set[str]:
    return {p.stem for d in (CORE, AIRFLOW_SIDE, SPARK_SIDE, DEV) for p in d.rglob("*.py") if p.stem != "__init__"}


def load_plugins(plugins_folder: Path) -> dict:
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run([sys.executable, "-c", PLUGIN_PROBE, json.dumps(sorted(project_stems()))], env=env,
                         capture_output=True, text=True, timeout=180, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_airflow_plugin_loader_registers_no_project_module_under_a_bare_stem(tmp_path):
    loaded = load_plugins(REPO / "plugins")
    assert loaded == {"bare": [], "errors": {}}
    # The same folder without its .airflowignore: the loader executes every module as a top-level
    # one (tasks, s3, ...). This is what the ignore file prevents, and what the test would catch.
    copy = tmp_path / "plugins"
    shutil.copytree(REPO / "plugins", copy, ignore=shutil.ignore_patterns(".airflowignore", "__pycache__"))
    assert {"tasks", "s3", "spark_submit"} <= set(load_plugins(copy)["bare"])


def modules(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py"))


def imported(path: Path, module_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_dependencies_run_one_way():
    """dags -> Airflow side -> core <- Spark side; the core imports neither Airflow nor Spark."""
    for path in modules(CORE):
        assert not top(imported(path)) & {"airflow", "pyspark", "music_recs_airflow", "spark_jobs",
                                          "music_recs_dev", "boto3"}, path
    for path in modules(SPARK_SIDE):
        assert not top(imported(path)) & {"airflow", "music_recs_airflow", "music_recs_dev"}, path
    for path in modules(AIRFLOW_SIDE):
        # The CLI's local-server commands import dev tooling inside the command, never at module level.
        assert not top(imported(path, module_level_only=True)) & {"spark_jobs", "pyspark", "music_recs_dev"}, path
    for path in modules(REPO / "dags"):
        assert top(imported(path)) <= {"__future__", "datetime", "airflow", "music_recs", "music_recs_airflow"}, path


def reads_environment(path: Path) -> list[int]:
    """Lines that read the process environment (``os.environ``, ``os.getenv``, ``from os import environ``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb") \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" \
                and {a.name for a in node.names} & {"environ", "getenv"}:
            lines.append(node.lineno)
    return lines


def test_only_the_settings_module_reads_the_environment():
    readers = {str(p.relative_to(REPO)): reads_environment(p)
               for p in modules(CORE, AIRFLOW_SIDE, SPARK_SIDE, REPO / "dags")}
    assert readers.pop(str(SETTINGS_MODULE.relative_to(REPO)))  # the one that does
    assert {name: lines for name, lines in readers.items() if lines} == {}


def test_the_environment_check_sees_each_way_of_reading_it(tmp_path):
    probe = tmp_path / "probe.py"
    for source in ("import os\nx = os.environ['A']\n", "import os\nx = os.getenv('A')\n",
                   "from os import environ\n", "import os\nos.environ.get('A')\n"):
        probe.write_text(source)
        assert reads_environment(probe), source


@pytest.mark.parametrize("folder", ["dags", "plugins", "spark_jobs", "src/music_recs", "src/music_recs_dev"])
def test_readme_layout_names_every_folder_of_the_tree(folder):
    layout = (REPO / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    assert f"`{folder}/`" in layout
    packages = [p.parent for p in (REPO / folder).rglob("__init__.py")]
    for package in packages:
        assert f"`{package.relative_to(REPO).as_posix()}/`" in layout or package == REPO / folder, package
