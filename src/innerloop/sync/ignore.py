"""Which local paths a sync rule covers: its ``exclude``, the ``.gitignore`` files and the ``.dockerignore``.

A sync rule copies a folder into the container. Three sources say what in
that folder is not the app's source, and all three are honoured:

1. the rule's own ``exclude`` patterns (gitignore syntax, relative to the
   rule's root). They are the user's last word: a pattern here that matches a
   path decides for it, so ``!dist/`` syncs a folder that ``.gitignore``
   ignores;
2. ``.gitignore`` files, with git's rules: a pattern in ``sub/.gitignore``
   applies below ``sub/`` and is read relative to it; a deeper file overrides a
   shallower one; the last matching line of a file wins; and nothing below an
   ignored folder can be re-included (git never looks inside it). When the
   sync root sits inside a git work tree, the ``.gitignore`` files between the
   work tree's top and the root, and ``.git/info/exclude``, apply too, as they
   do for git, to the paths below the root (a root that git ignores, such as
   ``dist/``, is still synced: the rule names it). The user's global
   ``core.excludesFile`` does not apply: it describes one person's editor,
   not the project. Checked against ``git ls-files --ignored`` on generated
   trees (tests/unit/sync/test_ignore.py);
3. the ``.dockerignore`` at the root of the service's build context: a file
   that is not in the image should not be synced into its container either.

A path is ignored when the rule's patterns say so, or (when they say nothing)
when git or the ``.dockerignore`` ignores it. ``.git`` is always ignored,
except by the scope of a build context (``keep_git``, used by the image
builders: Docker sends ``.git`` unless the ``.dockerignore`` excludes it).

``.dockerignore`` is not gitignore. Docker (moby/patternmatcher) cleans each
pattern with Go's ``filepath.Clean`` and matches it with ``filepath.Match``
plus ``**``. :func:`translate_dockerignore` rewrites each line into the
gitignore pattern that means the same, for these differences:

- every pattern is anchored at the context root (``*.pyc`` is only the
  top-level ones, ``**/*.pyc`` is all of them), so each gets a leading ``/``;
- the pattern is cleaned: ``./a``, ``a//b``, ``a/x/../b`` and ``/a`` become
  ``a``, ``a/b``, ``a/b`` and ``a``; a trailing ``/`` is dropped, so ``dir/``
  also matches a file named ``dir``; patterns that leave the context (``..``)
  or name its root (``.``, ``/``) match nothing and are dropped;
- leading and trailing blanks are trimmed and only a line that *starts* with
  ``#`` is a comment (`` # x`` is a pattern);
- in a bracket expression Go negates with ``[^...]`` only; ``[!...]`` is a
  literal ``!``, rewritten so that gitignore does not read it as a negation;
- the last matching line wins, and a line that matches a parent folder counts
  as matching the file (BuildKit's walk), so ``!dir/keep`` re-includes a file
  of an excluded ``dir``, which git cannot; an excluded folder is only
  skipped whole when no ``!`` line could reach inside it;
- not handled: ``**`` inside a path component (``a**b``; Docker lets it cross
  folders, gitignore reads it as ``*``), and the per-Dockerfile
  ``<Dockerfile>.dockerignore`` that BuildKit prefers when present.

Speed: every line is compiled once, by pathspec, into a regular expression
when the scope is built; a question costs a few matches per applicable file,
and the answer for each folder is cached, so a file deep in a tree costs one
lookup for its folder plus its own match. Patterns that cannot be compiled are
skipped, as git does, and reported in :attr:`SyncScope.problems`; in the
rule's ``exclude`` they are an error (:class:`IgnorePatternError`), since the
user wrote them in innerloop.yaml.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pathspec import GitIgnoreSpec

from innerloop.sync.contained import is_relative_path

GIT_DIR = ".git"
GITIGNORE = ".gitignore"
DOCKERIGNORE = ".dockerignore"

# Answers cached per folder; cleared past this many (a runaway tree should not
# grow memory without bound).
_FOLDER_CACHE_LIMIT = 200_000
_GLOB_CHARS = re.compile(r"[*?\[\\]")
# The group pathspec puts on the "/" after a folder its expression matched.
_FOLDER_MARK = "ps_d"


class PathFilter(Protocol):
    """What the planner and the watcher need from a scope: is this path ignored?"""

    def ignores(self, path: str, *, is_dir: bool = False) -> bool: ...


class IgnorePatternError(ValueError):
    """A pattern in the rule's ``exclude`` that cannot be compiled; the message names it."""


@dataclass(frozen=True, kw_only=True)
class IgnoreFile:
    """The text of one ignore file, and where it sits relative to the sync root.

    ``folder``: the file's folder, relative to the sync root, when it is inside
    it (``""`` for the root itself). ``above``: when the file sits above the
    sync root, the root's path relative to the file's folder (``"api"`` for
    ``./.gitignore`` and a root ``./api``). ``source`` names the file in messages.
    """

    text: str
    folder: str = ""
    above: str = ""
    source: str = GITIGNORE

    def __post_init__(self) -> None:
        if self.folder and self.above:
            raise ValueError("an ignore file is either inside the sync root (folder) or above it (above), not both")

    def relative(self, path: str) -> str | None:
        """``path`` (relative to the sync root) as this file's patterns see it, or None if it is out of reach."""
        if self.folder:
            if not path.startswith(self.folder) or path[len(self.folder) : len(self.folder) + 1] != "/":
                return None
            path = path[len(self.folder) + 1 :]
        if self.above:
            path = f"{self.above}/{path}"
        return path

    @property
    def depth(self) -> int:
        """How deep the file sits, for git's "deeper overrides shallower" (negative above the root)."""
        if self.folder:
            return self.folder.count("/") + 1
        if self.above:
            return -(self.above.count("/") + 1)
        return 0


def translate_dockerignore(text: str) -> list[str]:
    """The gitignore patterns that mean what the lines of a ``.dockerignore`` mean (see the module docstring)."""
    patterns: list[str] = []
    for number, raw in enumerate(text.splitlines()):
        line = raw.removeprefix("\ufeff") if number == 0 else raw
        if line.startswith("#"):
            continue
        pattern = line.strip()
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:].strip()
        if not pattern:
            continue
        pattern = posixpath.normpath(pattern).lstrip("/")
        if pattern in ("", ".", "..") or pattern.startswith("../"):
            continue
        patterns.append(("!" if negate else "") + "/" + _go_brackets(pattern))
    return patterns


def _go_brackets(pattern: str) -> str:
    """Rewrite Go's literal ``[!...]`` as ``[...!]``, and keep a trailing backslash literal."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2] if i + 1 < len(pattern) else "\\\\")
            i += 2
            continue
        if char == "[" and pattern.startswith("[!", i):
            close = pattern.find("]", i + 3)  # a ']' right after '[!' is a member, as in Go
            if close == -1:
                out.append("\\[")
                i += 1
                continue
            members = pattern[i + 2 : close]
            out.append(f"[{members}!]")
            i = close + 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _compile(lines: Iterable[str], *, source: str, docker: bool, problems: list[str]) -> _Matcher:
    """Compile pattern lines once; a line that does not compile is reported in ``problems`` and skipped."""
    compiled: list[_Line] = []
    for number, line in enumerate(lines, start=1):
        try:
            compiled.extend(_Line.compile(line))
        except ValueError as error:
            problems.append(f"{source}:{number}: {line.strip()!r} is not a valid pattern ({error}); it is skipped")
    return _DockerMatcher(compiled) if docker else _GitMatcher(compiled)


@dataclass(frozen=True)
class _Line:
    """One compiled pattern line, able to say whether it matches a path *itself*.

    pathspec's GitIgnoreSpec answers "is this file ignored?" in one call by
    also matching the file's parent folders, and weighs a file's own line
    against a folder's line with priorities of its own. Compared with
    ``git ls-files --ignored`` on thousands of random trees, that differed
    from git in corner cases (a ``!x*`` line matching a parent ``x1``
    re-included ``x1/d``, which git ignores by an earlier ``d`` line). So
    pathspec compiles each line (its translation of gitignore globs is the
    part worth reusing) and the question "does this line match the path
    itself?" is answered here from the shape of its expression, which
    pathspec 1.x builds as: a match ending at the path's end (for a folder,
    with pathspec's folder mark on its final ``/``), a prefix ``dir/`` for
    ``dir/**`` (something inside the folder), or ``.`` for ``*`` and ``**``.
    """

    regex: re.Pattern[str]
    ignores: bool  # False for a ``!`` line
    folders_only: bool

    @staticmethod
    def compile(line: str) -> list[_Line]:
        # ``dir/**/`` means the folders inside ``dir`` (git); pathspec reads it
        # as the folder ``dir/`` itself, so it is compiled as ``dir/**``, for folders only.
        text = line.rstrip()
        folders_only = text.endswith("/**/")
        out: list[_Line] = []
        for pattern in GitIgnoreSpec.from_lines([text[:-1] if folders_only else line]).patterns:
            if pattern.include is None or pattern.regex is None:
                continue  # a blank line or a comment
            source = pattern.regex.pattern
            if not isinstance(source, str):
                raise TypeError("text patterns compile to text expressions")
            if source == ".":
                regex = re.compile("")
            elif source.endswith("/") and _FOLDER_MARK not in pattern.regex.groupindex:
                regex = re.compile(f"(?:{source})[^/]")  # one more name after the folder's "/"
            else:
                regex = re.compile(f"(?:{source})\\Z")
            out.append(_Line(regex, bool(pattern.include), folders_only))
        return out

    def matches_itself(self, path: str, *, is_dir: bool) -> bool:
        if self.folders_only and not is_dir:
            return False
        subject = path + "/" if is_dir else path
        match = self.regex.search(subject)
        if match is None:
            return False
        # A folder is matched by an expression ending on its final "/" (with
        # pathspec's mark), not by one that stopped at a parent's "/".
        return not is_dir or not self.regex.pattern.endswith("\\Z") or match.groupdict().get(_FOLDER_MARK) is not None


class _Matcher(Protocol):
    def verdict(self, path: str, *, is_dir: bool) -> bool | None: ...


class _GitMatcher:
    """Git's rule: the last line that matches the path itself wins; parent folders act by pruning."""

    def __init__(self, lines: list[_Line]) -> None:
        self._lines = lines[::-1]

    def verdict(self, path: str, *, is_dir: bool) -> bool | None:
        for line in self._lines:
            if line.matches_itself(path, is_dir=is_dir):
                return line.ignores
        return None


class _DockerMatcher:
    """Docker's rule: the last line that matches the path or one of its parent folders wins.

    That is BuildKit's walk (moby/patternmatcher ``MatchesUsingParentResults``);
    Docker does not tell folders from files in a pattern, so every path is
    matched as a plain name.
    """

    def __init__(self, lines: list[_Line]) -> None:
        self._lines = lines[::-1]

    def verdict(self, path: str, *, is_dir: bool) -> bool | None:
        subjects = [path[:i] for i, char in enumerate(path) if char == "/"] + [path]
        for line in self._lines:
            if any(line.matches_itself(subject, is_dir=False) for subject in subjects):
                return line.ignores
        return None


@dataclass(frozen=True)
class _Layer:
    file: IgnoreFile
    matcher: _Matcher

    def verdict(self, path: str, *, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included by a ``!`` line, None: no line matches."""
        relative = self.file.relative(path)
        if relative is None:
            return None
        return self.matcher.verdict(relative, is_dir=is_dir)


class SyncScope:
    """The compiled answer to "does this sync rule cover this path?" (paths are posix, relative to the root).

    Build it with :func:`load_scope` (reads the files) or directly from texts
    (pure, for tests and for callers that already hold the files).
    """

    def __init__(
        self,
        *,
        exclude: Sequence[str] = (),
        gitignores: Sequence[IgnoreFile] = (),
        info_exclude: IgnoreFile | None = None,
        dockerignore: IgnoreFile | None = None,
        keep_git: bool = False,
    ) -> None:
        # ``keep_git``: a build context, where ``.git`` is sent unless the .dockerignore says otherwise.
        self._skip_git = not keep_git
        self.problems: list[str] = []
        rule_problems: list[str] = []
        rule = _compile(exclude, source="exclude", docker=False, problems=rule_problems)
        if rule_problems:
            raise IgnorePatternError("; ".join(rule_problems))
        self._rule = _Layer(IgnoreFile(text="\n".join(exclude), source="exclude"), rule)
        # Deepest first, .git/info/exclude last: the first file with an
        # opinion decides, as in git's precedence.
        ordered = [*sorted(gitignores, key=lambda f: -f.depth), *([info_exclude] if info_exclude else [])]
        self._git = [self._layer(file, docker=False) for file in ordered]
        self._docker: _Layer | None = None
        # Where a ``!`` line of the .dockerignore could re-include something: the
        # fixed folders its pattern starts with ("" when it starts with a glob).
        self._docker_reentries: list[str] = []
        if dockerignore is not None:
            self._docker = self._layer(dockerignore, docker=True)
            self._docker_reentries = [
                _fixed_prefix(line[1:]) for line in translate_dockerignore(dockerignore.text) if line.startswith("!")
            ]
        self._folders: dict[str, bool] = {}

    def _layer(self, file: IgnoreFile, *, docker: bool) -> _Layer:
        lines = translate_dockerignore(file.text) if docker else file.text.splitlines()
        return _Layer(file, _compile(lines, source=file.source, docker=docker, problems=self.problems))

    def ignores(self, path: str, *, is_dir: bool = False) -> bool:
        """Whether ``path`` is outside the rule (a folder: whether it is skipped whole)."""
        if not path:
            return False  # the root itself: the rule names it
        if is_dir:
            return self.prunes(path)
        parent, _, name = path.rpartition("/")
        if (self._skip_git and name == GIT_DIR) or (parent and self.prunes(parent)):
            return True
        return self._ignores_itself(path, is_dir=False)

    def covers(self, path: str) -> bool:
        """Whether the file at ``path`` is synced by the rule (never a path that could leave the root: ``../x``)."""
        return is_relative_path(path) and not self.ignores(path)

    def prunes(self, folder: str) -> bool:
        """Whether nothing below ``folder`` can be covered, so a scan or a watch may skip it whole."""
        if not folder:
            return False
        cached = self._folders.get(folder)
        if cached is None:
            parent, _, name = folder.rpartition("/")
            cached = (
                (self._skip_git and name == GIT_DIR)
                or (bool(parent) and self.prunes(parent))
                or self._ignores_itself(folder, is_dir=True)
            )
            if len(self._folders) >= _FOLDER_CACHE_LIMIT:
                self._folders.clear()
            self._folders[folder] = cached
        return cached

    def _ignores_itself(self, path: str, *, is_dir: bool) -> bool:
        """The verdict on ``path`` alone, its parent folders being covered."""
        rule = self._rule.verdict(path, is_dir=is_dir)
        if rule is not None:
            return rule
        for layer in self._git:
            verdict = layer.verdict(path, is_dir=is_dir)
            if verdict is not None:
                if verdict:
                    return True
                break
        if self._docker is None or not self._docker.verdict(path, is_dir=False):
            return False
        # A folder the .dockerignore excludes is skipped whole only when no
        # ``!`` line could re-include something inside it.
        return not (is_dir and self._docker_may_reinclude(path))

    def _docker_may_reinclude(self, folder: str) -> bool:
        assert self._docker is not None
        seen = self._docker.file.relative(folder)
        if seen is None:
            return False
        return any(
            not prefix or prefix == seen or prefix.startswith(seen + "/") or seen.startswith(prefix + "/")
            for prefix in self._docker_reentries
        )


def _fixed_prefix(pattern: str) -> str:
    """The leading folders of a (translated, anchored) pattern before its first wildcard."""
    parts = pattern.lstrip("/").split("/")
    fixed: list[str] = []
    for part in parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return "/".join(fixed)


def git_top(start: Path) -> Path | None:
    """The top of the git work tree holding ``start`` (the folder with ``.git``), or None."""
    for folder in (start, *start.parents):
        if (folder / GIT_DIR).exists():
            return folder
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def load_scope(root: Path, *, exclude: Sequence[str] = (), build_context: Path | None = None) -> SyncScope:
    """Read the ignore files that apply to the sync root ``root`` and compile its scope.

    Walks ``root`` for nested ``.gitignore`` files, skipping folders already
    ignored (git does not read a .gitignore inside an ignored folder either).
    """
    root = root.absolute()
    gitignores: list[IgnoreFile] = []
    top = git_top(root)
    if top is not None and top != root:
        for outer in (top, *[p for p in root.parents if p != top and top in p.parents]):
            text = _read(outer / GITIGNORE)
            if text is not None:
                above = root.relative_to(outer).as_posix()
                gitignores.append(IgnoreFile(text=text, above=above, source=_display(outer / GITIGNORE, root)))
    info_exclude = None
    if top is not None:
        text = _read(top / GIT_DIR / "info" / "exclude")
        if text is not None:
            above = root.relative_to(top).as_posix() if top != root else ""
            info_exclude = IgnoreFile(text=text, above=above, source=".git/info/exclude")

    dockerignore = _dockerignore_for(root, build_context)

    def compiled() -> SyncScope:
        return SyncScope(exclude=exclude, gitignores=gitignores, info_exclude=info_exclude, dockerignore=dockerignore)

    scope = compiled()
    pending = [""]
    while pending:
        folder = pending.pop()
        here = root / folder if folder else root
        text = _read(here / GITIGNORE)
        if text is not None:
            gitignores.append(IgnoreFile(text=text, folder=folder, source=posixpath.join(folder, GITIGNORE)))
            scope = compiled()
        try:
            entries = list(os.scandir(here))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                child = f"{folder}/{entry.name}" if folder else entry.name
                if not scope.prunes(child):
                    pending.append(child)
    return scope


def _dockerignore_for(root: Path, build_context: Path | None) -> IgnoreFile | None:
    if build_context is None:
        return None
    context = build_context.absolute()
    text = _read(context / DOCKERIGNORE)
    if text is None:
        return None
    source = _display(context / DOCKERIGNORE, root)
    if root == context:
        return IgnoreFile(text=text, source=source)
    if context in root.parents:
        return IgnoreFile(text=text, above=root.relative_to(context).as_posix(), source=source)
    if root in context.parents:
        return IgnoreFile(text=text, folder=context.relative_to(root).as_posix(), source=source)
    return None  # the context and the sync root do not overlap


def _display(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)
