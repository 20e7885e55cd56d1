"""MkDocs hooks of jaxbp's site (`hooks:` in mkdocs.yml): one markdown source per page, with
links that resolve both on GitHub and in the built site.

- README.md, at the repository root, is the site's home page (`index.md`). It links the
  guide as `docs/PAGE.md`; on the site the `docs/` prefix is dropped.
- The experiments' results stay where the scripts write them, `experiments/results/`, out of
  `docs/`. Every file there is added to the site under the same path (the Markdown tables
  rendered as pages, figures and logs copied), and a page's link to one, written as the
  repository's relative path (`../experiments/results/x.md` from `docs/`), is pointed there.
  MkDocs then checks those links like any other: one to a file that does not exist fails
  the strict build.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = "experiments/results"


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files: Files, config) -> Files:
    root = _root(config)
    files.append(File.generated(config, "index.md", abs_src_path=str(root / "README.md")))
    for path in sorted((root / RESULTS).iterdir()):
        if path.is_file():
            files.append(
                File(
                    f"{RESULTS}/{path.name}",
                    src_dir=str(root),
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                )
            )
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    depth = page.file.src_uri.count("/")
    if page.file.src_uri.startswith(RESULTS + "/"):
        return markdown
    if page.file.src_uri == "index.md":  # README.md: docs/PAGE.md is PAGE.md on the site
        markdown = re.sub(r"\]\(docs/", "](", markdown)
    # A page of docs/ at `depth` reaches the repository root with depth + 1 steps up, the
    # site's root with depth.
    up = "../" * depth
    return markdown.replace(f"]({up}../{RESULTS}/", f"]({up}{RESULTS}/")
