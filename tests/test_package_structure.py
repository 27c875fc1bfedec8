"""The shape of the package: no import machinery of its own, one owner per fact, a self-contained model package, and
functions short enough to hold in mind."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import naclip_hf

PACKAGE = Path(naclip_hf.__file__).parent
MODEL_PACKAGE = PACKAGE / "models" / "naclip"
MAX_FUNCTION_LINES = 100


def run_python(code: str) -> str:
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def source_files(root: Path = PACKAGE) -> list[Path]:
    return sorted(root.rglob("*.py"))


def test_import_adds_no_import_machinery_of_its_own():
    """The only finder `import naclip_hf` adds is wrapt's (its post-import hook on transformers)."""
    output = run_python(
        "import sys\n"
        "before = list(sys.meta_path), list(sys.path_hooks)\n"
        "import naclip_hf\n"
        "added = [finder for finder in sys.meta_path if finder not in before[0]]\n"
        "print([type(finder).__module__ for finder in added], sys.path_hooks == before[1])\n"
        "print('transformers' in sys.modules, 'torch' in sys.modules)\n"
    )
    assert output.split() == ["['wrapt.importer']", "True", "False", "False"]
    for path in source_files():
        source = path.read_text()
        assert "importlib.abc" not in source and "sys.meta_path" not in source, path


def test_config_init_is_defined_in_the_class():
    from naclip_hf import NACLIPConfig

    assert "__init__" in NACLIPConfig.__dict__
    assert NACLIPConfig.__init__.__module__ == NACLIPConfig.__module__
    assert NACLIPConfig.__init__.__qualname__ == "NACLIPConfig.__init__"
    config = NACLIPConfig(method="sclip", pamr_steps=10)
    assert (config.attn_strategy, config.arch, config.pamr_steps) == ("csa", "vanilla", 10)


def model_package_imports(stem: str) -> set[str]:
    """The model package's modules that `stem` imports, directly or through others (at any depth in the file)."""
    seen: set[str] = set()
    pending = [stem]
    while pending:
        tree = ast.parse((MODEL_PACKAGE / f"{pending.pop()}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and node.module not in seen:
                seen.add(node.module)
                pending.append(node.module)
    return seen


def test_configuration_module_imports_no_modeling_module():
    """Loading a configuration (AutoConfig, remote code) needs no model code. Checked in the source: importing the
    module in a process registers NACLIP with transformers, which imports the model."""
    imported = model_package_imports("configuration_naclip")
    assert "options" in imported
    assert not any("modeling" in name for name in imported), sorted(imported)


def test_model_package_imports_nothing_outside_itself():
    siblings = {path.stem for path in MODEL_PACKAGE.glob("*.py")}
    for path in MODEL_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in siblings, f"{path.name}: from {'.' * node.level}{node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(name.split(".")[0] == "naclip_hf" for name in names), f"{path.name} imports {names}"


def test_no_function_is_longer_than_a_hundred_lines():
    long = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "functions over 100 lines: " + ", ".join(long)


def test_the_last_block_settings_are_named_together_only_in_options():
    from naclip_hf.models.naclip.options import names_of_stage

    block = set(names_of_stage("block"))
    assert block == {
        "arch", "attn_strategy", "gaussian_std", "temp_thd", "attn_rcs_weights", "attn_sfr_weights", "use_sfr",
    }  # fmt: skip
    offenders = []
    for path in source_files():
        if path == MODEL_PACKAGE / "options.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {item.value for item in node.elts if isinstance(item, ast.Constant)}
                if block <= names:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, "the last block's settings listed again at " + ", ".join(offenders)


REMOVED_SEGMENTER_FLAGS = {
    "exported", "supports_attention_maps", "stored_classes", "has_text_model", "is_test_model",
    "check_attention_methods",
}  # fmt: skip
REMOVED_DEMO_OPTIONS = {"stored_labels_text", "call_options", "method_settings", "_base_settings", "_check_fixed_block"}
BACKEND_CLASSES = {"TorchSegmenter", "OnnxSegmenter", "ExportedSegmenter"}


def _segmenter_attributes(tree: ast.AST) -> set[str]:
    """The attributes read on anything named `segmenter` (`segmenter.x`, `self.segmenter.x`)."""
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            if name == "segmenter":
                read.add(node.attr)
    return read


def test_commands_and_the_demo_use_the_segmenter_protocol_only():
    """The demo and the commands never ask a segmenter which backend it is: no removed capability flag, no
    attribute outside the `Segmenter` protocol, no `isinstance` on (nor import of) a backend class, and the last
    block's settings not listed again."""
    from naclip_hf.models.naclip.options import names_of_stage
    from naclip_hf.segmenter import Segmenter

    protocol = {name for name in dir(Segmenter) if not name.startswith("_")} | {"source"}
    block = set(names_of_stage("block"))
    files = sorted((PACKAGE / "demo").glob("*.py")) + sorted((PACKAGE / "cli").glob("*.py"))
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text())
        where = path.relative_to(PACKAGE)
        nodes = list(ast.walk(tree))
        identifiers = {node.attr for node in nodes if isinstance(node, ast.Attribute)}
        identifiers |= {node.id for node in nodes if isinstance(node, ast.Name)}
        identifiers |= {alias.name for node in nodes if isinstance(node, ast.ImportFrom) for alias in node.names}
        removed = REMOVED_SEGMENTER_FLAGS | BACKEND_CLASSES
        removed |= REMOVED_DEMO_OPTIONS if path.parent.name == "demo" else set()
        offenders += [f"{where}: {name}" for name in sorted(identifiers & removed)]
        offenders += [f"{where}: segmenter.{name}" for name in sorted(_segmenter_attributes(tree) - protocol)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                checked = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
                if any(name in checked for name in BACKEND_CLASSES | {"Segmenter"}):
                    offenders.append(f"{where}:{node.lineno} isinstance(..., {checked})")
            if path.parent.name == "demo" and isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                names = {item.value for item in items if isinstance(item, ast.Constant)}
                if len(names & block) >= 3:
                    offenders.append(f"{where}:{node.lineno} the last block's settings listed again")
    assert not offenders, "backend-specific code in the demo or the commands: " + ", ".join(offenders)
