"""The package's import graph: each part imports only the parts below it, so there is no cycle."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "hf_cllm4rec"

# Lower layers never import higher ones. What ships in a checkpoint (configuration, modeling, tokenization) sits at
# the bottom, then the writes that leave a file whole or as it was; training, which writes model cards and checkpoints, sits above everything it uses; the entry points
# (the package's own `__init__`, the command line and the `evaluate` metric module) sit on top.
LAYERS = [
    {"configuration_cllm4rec"},
    {"modeling_cllm4rec", "tokenization_cllm4rec"},
    {"writing"},
    {"data"},
    {"serving"},
    {"evaluation"},
    {"hub"},
    {"training"},
    {"cli", "metrics", "__init__"},
]
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def package_part(module: str) -> str:
    """`hf_cllm4rec.serving.pipeline` -> `serving`; the package itself (or a name it exports) -> `__init__`."""
    parts = module.split(".")
    is_part = len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file())
    return parts[1] if is_part else "__init__"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the package modules that a source file imports (anywhere in the file)."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    package = relative.parts if path.name == "__init__.py" else relative.parts[:-1]
    package = [part for part in package if part != "__init__"]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])
            imported |= {base} if node.module else {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hf_cllm4rec":
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.split(".")[0] == "hf_cllm4rec"}
    return imported


def test_every_part_of_the_package_has_a_layer():
    parts = {
        path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0] for path in PACKAGE.rglob("*.py")
    }
    assert parts <= set(LAYER_OF), f"parts without a layer: {sorted(parts - set(LAYER_OF))}"


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source_part = path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0]
        for module in imported_modules(path):
            target_part = package_part(module)
            if target_part != source_part and LAYER_OF[target_part] >= LAYER_OF[source_part]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not upward, "imports that do not point down the layers:\n" + "\n".join(upward)


def test_checkpoint_files_import_only_torch_transformers_and_each_other():
    """`trust_remote_code` copies these files into every checkpoint: nothing else can be imported there."""
    shipped = ("configuration_cllm4rec", "modeling_cllm4rec", "tokenization_cllm4rec")
    for name in shipped:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {node.module.split(".")[0]} if not node.level else {(node.module or "").split(".")[0]}
            else:
                continue
            allowed = {"torch", "transformers", "numpy", "huggingface_hub", "", *shipped, *sys.stdlib_module_names}
            assert roots <= allowed, f"{name}.py imports {sorted(roots - allowed)}"
