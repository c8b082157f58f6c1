"""Sphinx extension: a {repo} role that links to a file of the book's own repository.

    {repo}`tests/test_errata.py`                      -> .../blob/main/tests/test_errata.py
    {repo}`the regression test <tests/test_errata.py>` (explicit title)

The address comes from `repository: url` and `branch` in _config.yml (Jupyter Book passes them
to the theme as repository_url / repository_branch), so that setting stays the only place the
repository's URL is written. Loaded through `sphinx: local_extensions` in _config.yml.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import ReferenceRole


class RepoFileRole(ReferenceRole):
    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        options = self.config.html_theme_options or {}
        url = str(options.get("repository_url", "")).rstrip("/")
        if not url:
            msg = self.inliner.reporter.error(
                "{repo} needs `repository: url` in _config.yml", line=self.lineno
            )
            return [self.inliner.problematic(self.rawtext, self.rawtext, msg)], [msg]
        branch = options.get("repository_branch", "main")
        path = self.target.lstrip("/")
        kind = "tree" if path.endswith("/") else "blob"
        ref = nodes.reference(
            self.rawtext, "", refuri=f"{url}/{kind}/{branch}/{path}", internal=False
        )
        ref += (
            nodes.literal(self.title, self.title)
            if not self.has_explicit_title
            else (nodes.Text(self.title))
        )
        return [ref], []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_role("repo", RepoFileRole())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
