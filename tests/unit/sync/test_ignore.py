"""Which paths a sync rule covers: exclude, nested .gitignore (checked against git itself), .dockerignore."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import innerloop.sync.ignore as ignore_module
from innerloop.sync.ignore import IgnoreFile, IgnorePatternError, SyncScope, load_scope, translate_dockerignore


def gitignores(files: dict[str, str]) -> list[IgnoreFile]:
    return [IgnoreFile(text=text, folder=folder) for folder, text in files.items()]


def ignored(scope: SyncScope, paths: list[str]) -> list[str]:
    return [p for p in paths if scope.ignores(p)]


# -- gitignore semantics ----------------------------------------------------


def test_nested_gitignore_applies_to_its_subtree_and_overrides_the_root() -> None:
    scope = SyncScope(gitignores=gitignores({"": "*.log\n", "sub": "!keep.log\n/local.txt\n"}))
    paths = ["a.log", "keep.log", "sub/x.log", "sub/keep.log", "sub/deep/keep.log", "sub/local.txt", "local.txt"]
    assert ignored(scope, paths) == ["a.log", "keep.log", "sub/x.log", "sub/local.txt"]


def test_negation_re_includes_a_file_the_same_file_ignored() -> None:
    scope = SyncScope(gitignores=gitignores({"": "*.txt\n!important.txt\n"}))
    assert ignored(scope, ["a.txt", "important.txt", "docs/important.txt", "docs/b.txt"]) == ["a.txt", "docs/b.txt"]


def test_directory_patterns_match_folders_and_everything_below_but_not_files() -> None:
    scope = SyncScope(gitignores=gitignores({"": "build/\n"}))
    assert scope.prunes("build")
    assert scope.ignores("build/out/app.js")
    assert scope.ignores("src/build/x")
    assert not scope.ignores("build")  # a *file* named build
    assert not scope.prunes("builds")


def test_nothing_below_an_ignored_folder_can_be_re_included_as_in_git() -> None:
    scope = SyncScope(gitignores=gitignores({"": "dir/\n!dir/keep\n"}))
    assert scope.ignores("dir/keep")
    # ... while ignoring the folder's *contents* keeps the folder open (the usual idiom).
    scope = SyncScope(gitignores=gitignores({"": "dir/*\n!dir/keep\n"}))
    assert ignored(scope, ["dir/keep", "dir/other"]) == ["dir/other"]


def test_a_negated_folder_does_not_re_include_files_a_file_pattern_ignores() -> None:
    # pathspec's GitIgnoreSpec alone gets these two wrong; git ignores important/x.txt and x1/d/f.
    scope = SyncScope(gitignores=gitignores({"": "*.txt\n!important/\n"}))
    assert scope.ignores("important/x.txt")
    scope = SyncScope(gitignores=gitignores({"": "d\n!x*\n"}))
    assert scope.ignores("x1/d/f")
    assert not scope.ignores("x1/e")


def test_double_star_slash_means_folders_inside() -> None:
    scope = SyncScope(gitignores=gitignores({"": "a/**/\n"}))
    assert not scope.ignores("a/file")
    assert not scope.prunes("a")
    assert scope.ignores("a/sub/file")


def test_gitignores_above_the_root_see_paths_with_the_root_prefix() -> None:
    above = IgnoreFile(text="/api/generated/\n*.tmp\n", above="api")
    other = IgnoreFile(text="/generated/\n", above="web")
    scope = SyncScope(gitignores=[above, other])
    assert scope.ignores("generated/x.py")
    assert scope.ignores("deep/a.tmp")
    assert not scope.ignores("src/x.py")


def test_info_exclude_has_the_lowest_precedence() -> None:
    scope = SyncScope(gitignores=gitignores({"": "!*.bak\n"}), info_exclude=IgnoreFile(text="*.bak\n*.swp\n"))
    assert ignored(scope, ["a.bak", "a.swp"]) == ["a.swp"]


# -- the rule's own exclude ----------------------------------------------------


def test_exclude_adds_patterns_and_has_the_last_word_over_gitignore() -> None:
    scope = SyncScope(exclude=["*.md", "!dist/"], gitignores=gitignores({"": "dist/\n*.log\n"}))
    assert ignored(scope, ["README.md", "dist/app.js", "x.log", "src/a.py"]) == ["README.md", "x.log"]
    assert not scope.prunes("dist")


def test_git_folder_is_always_ignored() -> None:
    scope = SyncScope(exclude=["!.git/", "!.git/**"])
    assert scope.prunes(".git")
    assert scope.ignores(".git/config")
    assert scope.ignores("vendor/lib/.git/HEAD")
    assert scope.ignores("submodule/.git")  # a worktree's .git file


def test_an_invalid_exclude_pattern_is_an_error_naming_it() -> None:
    with pytest.raises(IgnorePatternError, match=r"exclude:2: 'bad\\\\'"):
        SyncScope(exclude=["ok", "bad\\"])


def test_an_invalid_gitignore_line_is_skipped_and_reported() -> None:
    scope = SyncScope(gitignores=[IgnoreFile(text="*.log\nbad\\\n", source="api/.gitignore")])
    assert scope.ignores("x.log")
    assert scope.problems == [
        "api/.gitignore:2: 'bad\\\\' is not a valid pattern (Invalid git pattern: 'bad\\\\'); it is skipped"
    ]


def test_patterns_are_compiled_once_not_per_question(monkeypatch: pytest.MonkeyPatch) -> None:
    scope = SyncScope(exclude=["*.pyc"], gitignores=gitignores({"": "build/\n", "a": "x\n"}))

    class NoCompiling:
        @staticmethod
        def from_lines(*args: object) -> None:
            raise AssertionError("compiled again")

    monkeypatch.setattr(ignore_module, "GitIgnoreSpec", NoCompiling)
    assert [scope.ignores(f"a/{i}/m.pyc") for i in range(3)] == [True, True, True]
    assert scope.ignores("build/x") and scope.ignores("a/x") and not scope.ignores("a/y")


# -- .dockerignore ----------------------------------------------------------------


def test_translate_dockerignore_cleans_anchors_and_rewrites_go_brackets() -> None:
    text = "\ufeff# comment\n\n  *.pyc  \n./a//b/\n/abs\n! keep\n # not a comment\n[!x]y\n..\n../out\n.\n/\ntrail\\\n"
    assert translate_dockerignore(text) == [
        "/*.pyc",
        "/a/b",
        "/abs",
        "!/keep",
        "/# not a comment",
        "/[x!]y",
        "/trail\\\\",
    ]


def docker(text: str, **where: str) -> SyncScope:
    return SyncScope(dockerignore=IgnoreFile(text=text, source=".dockerignore", **where))


def test_dockerignore_patterns_are_anchored_at_the_context_root() -> None:
    scope = docker("*.pyc\n**/*.log\nnode_modules\n")
    paths = ["a.pyc", "src/a.pyc", "x.log", "src/deep/x.log", "node_modules/p/i.js", "web/node_modules/p.js"]
    assert ignored(scope, paths) == ["a.pyc", "x.log", "src/deep/x.log", "node_modules/p/i.js"]


def test_dockerignore_trailing_slash_also_matches_a_file() -> None:
    assert docker("build/\n").ignores("build")


def test_dockerignore_can_re_include_inside_an_excluded_folder() -> None:
    scope = docker("dir\n!dir/keep\n")
    assert ignored(scope, ["dir/keep", "dir/other", "dir/sub/x"]) == ["dir/other", "dir/sub/x"]
    assert not scope.prunes("dir")  # it must be walked to find dir/keep


def test_dockerignore_last_match_wins_even_against_a_folder_line() -> None:
    # git would keep dir/a.txt ignored (a file's own line beats a folder's); Docker's last line wins.
    assert not docker("dir/*.txt\n!dir\n").ignores("dir/a.txt")


def test_dockerignore_allowlist_style() -> None:
    scope = docker("*\n!src\n!package.json\n")
    assert ignored(scope, ["src/app.js", "package.json", "README.md", "node_modules/x/i.js"]) == [
        "README.md",
        "node_modules/x/i.js",
    ]
    assert scope.prunes("node_modules")  # no "!" line can reach inside: skipped whole
    assert not scope.prunes("src")


def test_dockerignore_brackets_follow_go() -> None:
    scope = docker("[!a]x\n[^b]y\n")
    assert ignored(scope, ["!x", "ax", "cx", "by", "cy"]) == ["!x", "ax", "cy"]


def test_dockerignore_position_relative_to_the_sync_root() -> None:
    # The build context is the project; the sync root is its api/ folder.
    above = docker("api/tests\n*.md\n", above="api")
    assert ignored(above, ["tests/t.py", "README.md", "src/a.py"]) == ["tests/t.py"]
    # The sync root is the project; the build context is its api/ folder.
    inside = docker("tests\n", folder="api")
    assert ignored(inside, ["api/tests/t.py", "tests/t.py"]) == ["api/tests/t.py"]


# -- loading from disk ------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_load_scope_reads_nested_ancestor_info_and_dockerignore(tmp_path: Path) -> None:
    (tmp_path / ".git" / "info").mkdir(parents=True)
    write(
        tmp_path,
        {
            ".git/info/exclude": "*.swp\n",
            ".gitignore": "/api/secrets/\n",
            ".dockerignore": "api/docs\n",
            "api/.gitignore": "*.log\n",
            "api/pkg/.gitignore": "!keep.log\n",
            "api/vendor/.gitignore": "!*\n",  # inside an ignored folder: never read, as in git
            "api/x.py": "",
        },
    )
    scope = load_scope(tmp_path / "api", exclude=["vendor/"], build_context=tmp_path)
    paths = ["x.py", "a.swp", "secrets/k", "docs/d.md", "a.log", "pkg/keep.log", "pkg/b.log", "vendor/v.py"]
    assert ignored(scope, paths) == ["a.swp", "secrets/k", "docs/d.md", "a.log", "pkg/b.log", "vendor/v.py"]


def test_load_scope_ignores_a_context_that_does_not_overlap(tmp_path: Path) -> None:
    write(tmp_path, {"web/.dockerignore": "*\n", "api/a.py": ""})
    scope = load_scope(tmp_path / "api", build_context=tmp_path / "web")
    assert not scope.ignores("a.py")


# -- the same answers as git ----------------------------------------------------

NAMES = ["a", "b", "c.txt", "d"]
PATTERNS = [
    "a", "b/", "/a", "*.txt", "a/*", "a/**", "**/b", "a/**/", "*", "*/", "?", "[ab]", "/b/c.txt", "d/**/b", "!a",
    "!*.txt", "!b/", "!/a/b", "!**", "!a/*",
]  # fmt: skip

paths_strategy = st.lists(
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map("/".join), min_size=1, max_size=8
)
folder_patterns = st.dictionaries(
    st.sampled_from(["", "a", "b", "a/b", "d/a"]), st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=4)
)


def valid_tree(paths: list[str]) -> list[str]:
    tree: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(path.startswith(p + "/") for p in tree):
            tree.append(path)
    return tree


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=paths_strategy, patterns=folder_patterns)
def test_same_files_ignored_as_git(
    tmp_path_factory: pytest.TempPathFactory, paths: list[str], patterns: dict[str, list[str]]
) -> None:
    root = tmp_path_factory.mktemp("repo")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    files = valid_tree(paths)
    write(root, {f: "x" for f in files})
    for folder, lines in patterns.items():
        if (root / folder).is_dir() or not folder:
            (root / folder / ".gitignore").write_text("\n".join(lines) + "\n")
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    by_git = sorted(p for p in listed.split("\0") if p and not p.endswith(".gitignore"))
    scope = load_scope(root)
    assert sorted(f for f in files if scope.ignores(f)) == by_git
