"""An in-memory stand-in for ``huggingface_hub.HfApi`` (import as ``from hub_fake import FakeHub``).

It keeps each repo as ``{path: bytes}``, applies ``upload_folder`` the way the Hub does (files
matching ``delete_patterns`` that the new folder lacks are removed), and serves
``hf_hub_download`` into ``local_dir`` (plus a ``.cache`` folder, as the real client writes).
"""

from __future__ import annotations

import fnmatch
import os


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]] | None = None, fail_download: str | None = None,
                 whoami_error: Exception | None = None):
        self.repos = {k: dict(v) for k, v in (repos or {}).items()}
        self.private: dict[str, bool] = {}
        self.calls: list[tuple] = []
        self.downloads: list[str] = []
        self.fail_download, self.whoami_error = fail_download, whoami_error

    # push
    def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        if repo_id in self.repos and not exist_ok:
            raise FileExistsError(repo_id)
        if repo_id not in self.repos:
            self.repos[repo_id], self.private[repo_id] = {}, bool(private)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, delete_patterns=None, **kw):
        self.calls.append(("upload_folder", repo_id, commit_message))
        files = {}
        for root, _, names in os.walk(folder_path):
            for n in names:
                full = os.path.join(root, n)
                with open(full, "rb") as f:
                    files[os.path.relpath(full, folder_path).replace(os.sep, "/")] = f.read()
        repo = self.repos[repo_id]
        for name in list(repo):
            if name not in files and any(fnmatch.fnmatch(name, p) for p in delete_patterns or ()):
                del repo[name]
        repo.update(files)
        return f"https://huggingface.co/{repo_id}/commit/{len(self.calls)}"

    # pull
    def list_repo_files(self, repo_id, revision=None, **kw):
        return sorted(self.repos[repo_id])

    def hf_hub_download(self, repo_id, filename, revision=None, local_dir=None, **kw):
        if filename == self.fail_download:
            raise ConnectionError(f"lost connection while downloading {filename}")
        self.downloads.append(filename)
        path = os.path.join(local_dir, *filename.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(self.repos[repo_id][filename])
        os.makedirs(os.path.join(local_dir, ".cache", "huggingface"), exist_ok=True)
        return path

    # login
    def whoami(self, token=None, **kw):
        self.calls.append(("whoami",))
        if self.whoami_error is not None:
            raise self.whoami_error
        return {"name": "tester"}

    def materialise(self, repo_id: str, folder) -> str:
        """Write a repo's files to ``folder`` (to load what was pushed without pull_from_hub)."""
        for name, data in self.repos[repo_id].items():
            path = os.path.join(folder, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        return str(folder)
