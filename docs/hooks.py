"""mkdocs hooks: the study's report and plots (``benchmarks/results/``) join the site under ``results/``, and the
repository's ``ARCHITECTURE.md`` is its architecture page (one text, read in both places).

The pages link them by their place in the repository (``../benchmarks/results/...``), which is what a reader of
``docs/`` on GitHub follows; in the site those links point at the copies under ``results/``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

IN_REPOSITORY = "../benchmarks/results/"
IN_SITE = "results/"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the study's report and every plot it shows, and the architecture page."""
    repository = Path(config.config_file_path).parent
    results = repository / "benchmarks" / "results"
    for path in [results / "REPORT.md", *sorted(results.glob("*.png"))]:
        files.append(File.generated(config, IN_SITE + path.name, abs_src_path=str(path)))
    files.append(File.generated(config, "architecture.md", abs_src_path=str(repository / "ARCHITECTURE.md")))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Links into ``benchmarks/results/`` made links into the site's copy."""
    return markdown.replace("](" + IN_REPOSITORY, "](" + IN_SITE)
