"""The man pages, --help and the README say the same: one source for each.

nordwgctl's commands and options come from its argparse parser (what --help prints); the
config keys come from data/nordwgd.toml.example. packaging/manpages.py writes the man pages
from both at package build time.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nordwgd import cli

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "packaging"))
import manpages  # noqa: E402

README = (REPO / "README.md").read_text()


def test_readme_lists_nordwgctl_as_its_parser_does() -> None:
    section = README[README.index("## nordwgctl") :]
    start = section.index("```\n") + 4
    block = section[start : section.index("```\n", start)]
    assert block == manpages.nordwgctl_usage(), (
        "README's nordwgctl block differs from the parser: "
        "python3 packaging/manpages.py --readme prints it"
    )


def test_the_readme_block_is_what_help_prints() -> None:
    for name, command in manpages.subcommands(cli.build_parser()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli.build_parser().parse_args([name, "--help"])
        usage = " ".join(out.getvalue().split("\n\n")[0].split()).removeprefix("usage: ")
        assert usage.replace(" [-h]", "") in manpages.nordwgctl_usage().replace("\n", " ")
        assert " ".join(usage.split()) in " ".join(command.format_usage().split()), name


def _readme_config_keys() -> set[str]:
    """The keys of the README's config table; "`api.host` / `addresses`" names two."""
    section = README[README.index("## Configuration") :]
    section = section[: section.index("\n## ", 5)]
    keys: set[str] = set()
    for line in section.splitlines():
        first = line.split(" | ")[0]
        names = re.findall(r"`([a-z_][a-z_0-9.]*)`", first)
        if not line.startswith("| `") or not names:
            continue
        table = names[0].rpartition(".")[0]
        keys.add(names[0])
        keys |= {name if "." in name or not table else f"{table}.{name}" for name in names[1:]}
    return keys


def test_readme_config_table_names_every_key_of_the_example() -> None:
    _, _, keys = manpages.config_keys()
    example = {f"{k.section}.{k.name}" if k.section else k.name for k in keys}
    assert len(example) > 40
    readme = _readme_config_keys()
    assert readme - example == set(), "in the README, not in data/nordwgd.toml.example"
    assert example - readme == set(), "in data/nordwgd.toml.example, not in the README"


def test_the_config_page_documents_every_key(tmp_path: Path) -> None:
    page = manpages.config_page()
    _, sections, keys = manpages.config_keys()
    assert len(keys) > 20
    for key in keys:
        assert f"\\fB{manpages.roff(key.name)}\\fR" in page, key
    for section, _ in sections:
        assert f".SS [{section}]" in page


def test_every_command_and_option_is_in_the_man_page() -> None:
    page = manpages.nordwgctl_page()
    for name, command in manpages.subcommands(cli.build_parser()):
        assert f"\\fBnordwgctl {manpages.roff(name)}" in page, name
        for action in command._actions:
            for flag in action.option_strings:
                if flag != "-h" and flag != "--help":
                    assert f"\\fB{manpages.roff(flag)}\\fR" in page, (name, flag)


def test_the_pages_render_without_warnings(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "packaging/manpages.py"), "--output", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(manpages.PAGES)
    for page in tmp_path.iterdir():
        result = subprocess.run(
            ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", str(page)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 127 or ("not found" in result.stderr and "man" in result.stderr):
            pytest.skip("man is not installed")
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", (page.name, result.stderr)
