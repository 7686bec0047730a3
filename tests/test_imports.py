"""Imports run one way (docs/architecture.md): this reads every module's imports and fails on a wrong arrow."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "video_st"

# module prefix -> top-level names it may not import (project subpackages or third-party libraries)
TOOLS_ONLY = {"video_st.bench", "video_st.viz"}  # measurement and drawing: imported by tools (and tests) only
FORBIDDEN = {
    "video_st.models.layers": {"video_st.data", "video_st.engine", "video_st.config", "deepspeed", "timm", "transformers", "video_st.models.vit"},
    "video_st.models.sparsify": {"video_st.data", "video_st.engine", "video_st.config", "deepspeed", "timm", "transformers", "video_st.models.vit"},
    "video_st.models": {"video_st.data", "video_st.engine", "video_st.config", "video_st.preprocess", "video_st.synthetic",
                        "deepspeed", *TOOLS_ONLY},
    "video_st.data": {"video_st.models", "video_st.engine", "video_st.preprocess", "video_st.synthetic", "deepspeed",
                      *TOOLS_ONLY},
    "video_st.preprocess": {"video_st.models", "video_st.engine", "video_st.synthetic", "deepspeed", *TOOLS_ONLY},
    "video_st.synthetic": {"video_st.models", "video_st.engine", "video_st.preprocess", "deepspeed", *TOOLS_ONLY},
    "video_st.engine": {"video_st.preprocess", "video_st.synthetic", *TOOLS_ONLY},
    "video_st.config": {"video_st.engine", "video_st.data", "video_st.preprocess", "video_st.synthetic", *TOOLS_ONLY},
    "video_st.errors": TOOLS_ONLY, "video_st.fileio": TOOLS_ONLY, "video_st.procs": TOOLS_ONLY,
    "video_st.compat": TOOLS_ONLY,
    "video_st.bench": {"deepspeed", "video_st.viz"},
    "video_st.viz": {"deepspeed", "video_st.bench"},
}
ALLOWED_THIRD_PARTY_IN_LOW_LAYERS = {"torch", "einops", "__future__", "math", "collections", "dataclasses", "typing"}


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: "." is the module's package, ".." its parent ...
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{node.module}" if node.module else parent
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # "from .. import viz" names video_st.viz
    return names


def test_imports_run_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = "video_st." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        imported = _imports(path, module)
        for prefix, forbidden in [*FORBIDDEN.items(), ("video_st", TOOLS_ONLY)]:  # video_st: the package itself
            if module == prefix or (prefix != "video_st" and module.startswith(prefix + ".")):
                wrong += [f"{module} -> {name}" for name in imported if any(name == f or name.startswith(f + ".") for f in forbidden)]
        if module in ("video_st.models.layers", "video_st.models.sparsify"):
            wrong += [f"{module} -> {name}" for name in imported
                      if name.split(".")[0] not in ALLOWED_THIRD_PARTY_IN_LOW_LAYERS and not name.startswith("video_st.models.")]
        if not module.startswith("video_st.engine"):
            wrong += [f"{module} -> {name}" for name in imported if name.split(".")[0] == "deepspeed"]
    assert not wrong, "imports against the layering: " + ", ".join(sorted(wrong))
