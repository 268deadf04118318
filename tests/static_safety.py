"""A static check of the source tree for unsafe loading and shell commands (used by test_safe_loading).

It parses every Python file (``ast``, not regular expressions, so comments and strings never
count) and reports each of these, with file and line:

* ``unsafe-import`` — importing ``pickle``/``_pickle``/``cPickle``/``dill``/``cloudpickle``/
  ``shelve``/``marshal``/``joblib`` (all of them can run code while loading);
* ``torch-load`` — ``torch.load(...)`` without ``weights_only=True``;
* ``np-load`` — ``np.load``/``numpy.load`` without ``allow_pickle=False``;
* ``allow-pickle`` — any ``allow_pickle=`` other than the literal ``False``;
* ``pickle-reader`` — ``read_pickle``, ``to_pickle``, ``read_hdf`` (object columns are pickled);
* ``yaml-load`` — ``yaml.load``/``full_load``/``unsafe_load`` (and ``*_all``), or an unsafe
  ``Loader=``; only ``yaml.safe_load``/``safe_load_all`` are allowed;
* ``eval`` — calls of ``eval``/``exec``/``compile``, and ``__import__`` of a computed name;
* ``shell`` — ``shell=True``, ``os.system``/``os.popen``, ``subprocess.getoutput``/
  ``getstatusoutput``, ``asyncio.create_subprocess_shell``, or a ``subprocess`` call whose command
  is a string (literal, f-string or concatenation) rather than a list of arguments;
* ``remote-code`` — a model loader (``*.from_pretrained``, ``LLM``/``vllm.LLM``,
  ``SentenceTransformer``, ``transformers.pipeline``) called without an explicit
  ``trust_remote_code=`` keyword, or with the literal ``True``: whether a checkpoint's own Python
  code may run is decided by the user (``--trust-remote-code``, a method parameter), never by a
  library default.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
PICKLE_READERS = {"read_pickle", "to_pickle", "read_hdf"}
YAML_UNSAFE = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"}
YAML_UNSAFE_LOADERS = {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}
SCANNED = ("bench", "methods", "reports", "configs", "benchmarks")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str) -> ast.keyword | None:
    return next((k for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _is_string_expr(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return _is_string_expr(node.left) or _is_string_expr(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        return _is_string_expr(node.func.value)
    return False


class _Visitor(ast.NodeVisitor):
    def __init__(self, path: str):
        self.path = path
        self.found: list[Finding] = []
        self.aliases: dict[str, str] = {}  # local name → module (import numpy as np → np: numpy)

    def add(self, node: ast.AST, rule: str, message: str) -> None:
        self.found.append(Finding(self.path, getattr(node, "lineno", 0), rule, message))

    # ------------------------------------------------------------ imports
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            top = a.name.split(".")[0]
            self.aliases[a.asname or top] = a.name if a.asname else top
            if top in UNSAFE_MODULES:
                self.add(node, "unsafe-import", f"import {a.name}: it can execute code while loading data")
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        top = (node.module or "").split(".")[0]
        if top in UNSAFE_MODULES:
            self.add(node, "unsafe-import", f"from {node.module} import …: it can execute code while loading data")
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if top == "yaml" and a.name in YAML_UNSAFE:
                self.add(node, "yaml-load", f"from yaml import {a.name}: use yaml.safe_load")
            if top == "os" and a.name in ("system", "popen"):
                self.add(node, "shell", f"from os import {a.name}: runs a shell")
        self.generic_visit(node)

    def _resolve(self, dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        full = self.aliases.get(head, head)
        return f"{full}.{rest}" if rest else full

    # ------------------------------------------------------------ calls
    def visit_Call(self, node: ast.Call) -> None:
        dotted = _dotted(node.func)
        name = self._resolve(dotted) if dotted else ""
        attr = node.func.attr if isinstance(node.func, ast.Attribute) else (node.func.id if isinstance(node.func, ast.Name) else "")

        if name == "torch.load" and not _is_const(getattr(_kw(node, "weights_only"), "value", None), True):
            self.add(node, "torch-load", "torch.load without weights_only=True unpickles arbitrary objects")
        if name == "numpy.load" and not _is_const(getattr(_kw(node, "allow_pickle"), "value", None), False):
            self.add(node, "np-load", "np.load needs allow_pickle=False")
        k = _kw(node, "allow_pickle")
        if k is not None and not _is_const(k.value, False):
            self.add(node, "allow-pickle", "allow_pickle must be the literal False")
        if attr in PICKLE_READERS:
            self.add(node, "pickle-reader", f"{attr} reads or writes pickled objects")
        if name.startswith("yaml.") and name.split(".")[-1] in YAML_UNSAFE:
            self.add(node, "yaml-load", f"{dotted}: use yaml.safe_load")
        k = _kw(node, "Loader")
        if k is not None and _dotted(k.value).split(".")[-1] in YAML_UNSAFE_LOADERS:
            self.add(node, "yaml-load", f"Loader={_dotted(k.value)} can construct arbitrary objects")
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec", "compile"):
            self.add(node, "eval", f"{node.func.id}() runs code built at run time")
        if isinstance(node.func, ast.Name) and node.func.id == "__import__" and not (
            node.args and isinstance(node.args[0], ast.Constant)
        ):
            self.add(node, "eval", "__import__ of a computed module name")

        k = _kw(node, "shell")
        if k is not None and not _is_const(k.value, False):
            self.add(node, "shell", "shell=True: a command line is parsed by a shell")
        if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "asyncio.create_subprocess_shell"):
            self.add(node, "shell", f"{dotted} runs a shell")
        if name.startswith("subprocess.") and name.split(".")[-1] in SUBPROCESS_CALLS:
            cmd = node.args[0] if node.args else getattr(_kw(node, "args"), "value", None)
            if cmd is not None and _is_string_expr(cmd):
                self.add(node, "shell", f"{dotted} with a command string; pass a list of arguments")

        loader = (
            attr == "from_pretrained"
            or (attr in ("LLM", "SentenceTransformer") and (dotted == attr or name.startswith(("vllm", "sentence_transformers"))))
            or (attr == "pipeline" and name.startswith("transformers"))
        )
        if loader:
            k = _kw(node, "trust_remote_code")
            if k is None:
                self.add(node, "remote-code", f"{dotted or attr}(…) without an explicit trust_remote_code=")
            elif _is_const(k.value, True):
                self.add(node, "remote-code", f"{dotted or attr}(…, trust_remote_code=True): let the user decide")
        self.generic_visit(node)


def scan_source(text: str, path: str = "<string>") -> list[Finding]:
    v = _Visitor(path)
    v.visit(ast.parse(text, filename=path))
    return v.found


def scan_tree(root: Path, folders: tuple[str, ...] = SCANNED) -> tuple[list[Finding], int]:
    """Findings in every ``.py`` file under ``root/<folder>``; and how many files were scanned."""
    found: list[Finding] = []
    n = 0
    for folder in folders:
        for p in sorted((root / folder).rglob("*.py")):
            n += 1
            found.extend(scan_source(p.read_text(encoding="utf-8"), str(p.relative_to(root))))
    return found, n
