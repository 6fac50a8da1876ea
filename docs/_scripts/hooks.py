"""MkDocs hooks of the documentation site (mkdocs.yml `hooks:`).

- MathJax is served from the site itself: `tex-svg.js` (MathJax 3, SVG output, fonts inside)
  comes from the `django-static-mathjax` distribution of the `docs` extra, so the site renders
  its math offline and `make docs` fetches nothing but packages.
- A list that starts right under a line of text, as the docstrings and some pages write them
  (plain-text style), is a list: Markdown wants a blank line before it, which this hook's
  small Markdown extension inserts (`ListsAfterText`, for the pages and the docstrings).
- `<!-- cli-help [COMMAND] -->` in a page becomes the argparse help of `inertia [COMMAND]`,
  taken from `inertia.cli.build_parser()`: the command-line reference cannot drift.
- Every public name (the `__all__` of `inertia`, `inertia.monitor`, `inertia.theory`,
  `inertia.systems`, and `EXTRA_PUBLIC`) must appear in a `::: path` directive of the API
  pages (docs/api/), under any path that resolves to the same object (a constant that the
  collector cannot see, such as one of a tuple assignment, may instead be listed as
  `` `its.full.name` `` in a table of those pages), and every public class and function must
  have a docstring: each miss is a warning, which `--strict` turns into a failed build.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.plugins.inertia")

MATHJAX = "assets/mathjax/tex-svg.js"
PUBLIC_MODULES = ("inertia", "inertia.monitor", "inertia.theory", "inertia.systems")
EXTRA_PUBLIC = (
    "inertia.optim.InertiaSGD",
    "inertia.integrations.lightning.InertiaCallback",
    "inertia.integrations.transformers.InertiaCallback",
)
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.M)
LISTED = re.compile(r"^\| `([\w.]+)` \|", re.M)  # a table row naming a constant
CLI_HELP = re.compile(r"^<!-- cli-help(?: (\w+))? -->$", re.M)


LIST_ITEM = re.compile(r"^(?:[-*+]|\d+\.) \S")


class ListsAfterText(Preprocessor):
    """A blank line before a list item that directly follows a line of text (not a list)."""

    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        in_list = False
        for line in lines:
            if not line.strip():
                in_list = False
            elif LIST_ITEM.match(line):
                if out and out[-1].strip() and not in_list:
                    out.append("")
                in_list = True
            out.append(line)
        return out


class ListsExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        # after the fenced code blocks (25) are stashed, so code is never touched
        md.preprocessors.register(ListsAfterText(md), "inertia_lists", 24)


@event_priority(100)  # before mkdocstrings reads the extensions for the docstrings
def on_config(config: Any) -> Any:
    config.markdown_extensions.append(ListsExtension())
    return config


def on_files(files: Files, config: Any) -> Files:
    try:
        source = resources.files("mathjax") / "static" / "mathjax" / "es5" / "tex-svg.js"
    except ModuleNotFoundError:
        source = None
    if source is None or not source.is_file():
        raise PluginError(
            "MathJax not found: install the docs extra, pip install -e '.[docs]' "
            "(its django-static-mathjax distribution ships MathJax 3)"
        )
    files.append(File.generated(config, MATHJAX, abs_src_path=str(source)))
    return files


def resolve(path: str) -> Any:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def public_names() -> dict[str, Any]:
    names = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            names[f"{module_name}.{name}"] = getattr(module, name)
    for path in EXTRA_PUBLIC:
        names[path] = resolve(path)
    return names


def documented(name: str, obj: Any, directives: dict[str, Any]) -> bool:
    """Whether `obj` (public as `name`) has a directive: its own path, or another path with
    the same last name that resolves to the same object; a module, a directive inside it."""
    short = name.rsplit(".", 1)[1]
    if inspect.ismodule(obj):
        return any(path.startswith(obj.__name__ + ".") for path in directives)
    for path, target in directives.items():
        if path == name or (path.rsplit(".", 1)[-1] == short and target is obj):
            return True
    return False


def on_pre_build(config: Any) -> None:
    pages = [page.read_text("utf-8") for page in (Path(config["docs_dir"]) / "api").glob("*.md")]
    paths = sorted({m for page in pages for m in DIRECTIVE.findall(page)})
    listed = {m for page in pages for m in LISTED.findall(page)}
    directives = {}
    for path in paths:
        try:
            directives[path] = resolve(path)
        except (ImportError, AttributeError) as error:
            log.warning("API pages: '::: %s' does not resolve (%s)", path, error)
    for name, obj in public_names().items():
        if name.endswith(".__version__"):
            continue  # shown on the API index page
        if not (documented(name, obj, directives) or name in listed):
            log.warning("API pages: the public name %s has no '::: …' directive in docs/api/", name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (obj.__doc__ or "").strip():
            log.warning("API pages: the public name %s has no docstring", name)


def cli_help(command: str | None) -> str:
    from inertia.cli import build_parser

    parser = build_parser()
    if command is not None:
        actions = [a for a in parser._actions if a.dest == "command"]
        parser = actions[0].choices[command]  # type: ignore[index]
    parser.formatter_class = _wide_formatter()
    return parser.format_help()


def _wide_formatter() -> Any:
    import argparse

    return lambda prog: argparse.HelpFormatter(prog, width=96, max_help_position=32)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    def replace(match: re.Match[str]) -> str:
        return "```text\n" + cli_help(match.group(1)).rstrip() + "\n```"

    return CLI_HELP.sub(replace, markdown)
