"""The packages import one way: flink_jobs.cli -> the job in flink_jobs -> operators -> udfs.

``flink_jobs.devtools`` (local servers, demos) and ``flink_jobs.report`` sit beside the job: the
command line may use them, the job never does, and neither is shipped to the workers.

Three checks: each module is imported alone (in an interpreter that has forgotten every project
module) to see what it pulls in; every import statement, the ones inside functions too (which an
import alone never runs), is read from the source; and those statements form no circle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("udfs", "operators", "flink_jobs")
#: the parts of flink_jobs that are not the job
BESIDE_THE_JOB = ("flink_jobs.cli", "flink_jobs.devtools", "flink_jobs.report")


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = file.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue  # importing it runs the command line
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def forbidden(module: str) -> tuple[str, ...]:
    """The project modules that ``module`` must not import, by where it sits."""
    if within(module, "udfs"):
        return ("operators", "flink_jobs")
    if within(module, "operators"):
        return ("flink_jobs",)
    if within(module, "flink_jobs.cli"):
        return ()
    if within(module, "flink_jobs.devtools"):
        return ("flink_jobs.cli", "flink_jobs.report")
    if within(module, "flink_jobs.report"):
        return ("flink_jobs.cli", "flink_jobs.devtools")
    return BESIDE_THE_JOB  # the job


MODULES = module_names()


def test_every_package_is_found():
    assert {"udfs.registry", "operators.shuffle", "flink_jobs.protect_stream", "flink_jobs.cli.app",
            "flink_jobs.devtools.kafka_broker", "flink_jobs.report.risk"} <= set(MODULES)


@pytest.fixture(scope="module")
def pulled_in() -> dict[str, list[str]]:
    """For each module, the project modules that importing it (alone, in a fresh interpreter) loads."""
    # one interpreter for all of them (pyflink alone takes seconds to import): between two modules
    # it forgets the project's modules, so each import loads again all the project code it needs
    script = (
        "import importlib, json, sys\n"
        f"ours = {PACKAGES!r}\n"
        "def project():\n"
        "    return {m for m in sys.modules if m.split('.')[0] in ours}\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in project():\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "    out[name] = sorted(project())\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *MODULES], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MODULES)
def test_importing_a_module_pulls_in_nothing_above_it(module, pulled_in):
    above = [name for name in pulled_in[module] if within(name, *forbidden(module))]
    assert above == [], f"{module} pulls in {above}"


#: what a plain-Python test, a bench or a worker loads before a job is built: every operator, its
#: Flink wrapper too, and the job's core. PyFlink (seconds to import) comes in only when a job is
#: built; scipy (whose import once deadlocked the embedded interpreter), scikit-learn, diffprivlib
#: and numpy never do, not even when the full policy is compiled
LOADS_NO_FLINK = [m for m in MODULES if within(m, "operators")] + ["flink_jobs.protect", "flink_jobs.policy"]


def test_the_operators_and_the_jobs_core_load_without_pyflink_or_scipy():
    script = (
        "import importlib, sys\n"
        "def heavy():\n"
        "    return [m for m in ('pyflink', 'diffprivlib', 'scipy', 'sklearn', 'numpy') if m in sys.modules]\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    if heavy():\n"
        "        print(name, 'loads', heavy())\n"
        "        break\n"
        "else:\n"
        "    from flink_jobs.policy import load_policy\n"
        "    load_policy('conf/policies/customer-events.yaml')\n"
        "    if heavy():\n"
        "        print('compiling the shipped policy loads', heavy())\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *LOADS_NO_FLINK], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=True)
    assert "operators.dp.flink" in LOADS_NO_FLINK and "operators.k_anonymity.flink" in LOADS_NO_FLINK
    assert result.stdout.strip() == ""


def source_of(module: str) -> Path:
    path = ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_names(file: Path) -> list[str]:
    """Every module an import statement in ``file`` names, wherever the statement is."""
    names = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from flink_jobs import cli` names flink_jobs.cli
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("module", MODULES)
def test_no_import_statement_reaches_above_its_module(module):
    above = sorted({name for name in imported_names(source_of(module)) if within(name, *forbidden(module))})
    assert above == [], f"{module} imports {above}"


def imported_modules(module: str) -> set[str]:
    """The project modules ``module``'s import statements load, without its own parent packages.

    ``from flink_jobs.cli import run`` loads the module ``flink_jobs.cli.run``; Python runs the
    packages above a module first anyway, so an edge to them would make every package a circle.
    """
    known = set(MODULES)
    tree = ast.parse(source_of(module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module in known and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found |= submodules or {node.module}
    return {name for name in found if not within(module, name)}


def test_no_two_modules_import_each_other_even_through_others():
    graph = {module: imported_modules(module) for module in MODULES}
    done: set[str] = set()

    def circle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for name in sorted(graph[module]):
            found = circle_from(name, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    circles = [c for c in (circle_from(module, []) for module in MODULES) if c]
    assert circles == [], " -> ".join(circles[0])


def test_the_record_core_needs_no_flink_and_no_dp_library():
    heavy = ("pyflink", "diffprivlib", "scipy", "sklearn")
    script = f"import sys, flink_jobs.protect; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_the_workers_get_the_job_and_nothing_else(tmp_path, monkeypatch):
    from flink_jobs.cli import submit

    monkeypatch.setattr(submit, "connector_jars", lambda: [])  # the modules are the point here, not the jar
    names = zipfile.ZipFile(submit.pack_project(tmp_path)).namelist()
    modules = [name for name in names if name.endswith(".py")]
    assert [name for name in modules if name.startswith(("flink_jobs/cli/", "flink_jobs/devtools/",
                                                         "flink_jobs/report/"))] == []
    for needed in ("flink_jobs/protect_stream.py", "flink_jobs/kafka_job.py", "flink_jobs/keyring_ref.py",
                   "operators/shuffle.py", "udfs/registry.py"):
        assert needed in modules
