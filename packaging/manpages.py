"""Write nordwgd's man pages from the sources that --help and the README are checked against.

    python3 packaging/manpages.py --output DIR

nordwgd(8), nordwgd-killswitch(8) and nordwgctl(1) come from the commands' argparse parsers
(what --help prints); nordwgd.toml(5) comes from data/nordwgd.toml.example, whose comments
describe every key. tests/test_manpages.py checks that the README agrees with both.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "data" / "nordwgd.toml.example"
DATE = "2026-12-03"
SOURCE = "nordwgd"

FILES = (
    ("/etc/nordwgd/nordwgd.toml", "the configuration, see nordwgd.toml(5)"),
    ("/var/lib/nordwgd/", "the stored login (mode 0600), settings changed over D-Bus, caches"),
    ("/run/nordwgd/", "the record of every change made to the system, kept across restarts"),
)


def roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def header(name: str, section: int, title: str) -> list[str]:
    version = _version()
    return [
        f'.TH {name.upper()} {section} "{DATE}" "{SOURCE} {version}" "{title}"',
        ".SH NAME",
        f"{roff(name)} \\- {roff(_summary(name))}",
    ]


def _version() -> str:
    from nordwgd import __version__

    return __version__


def _summary(name: str) -> str:
    return {
        "nordwgd": "NordVPN NordLynx (WireGuard) daemon with a kill-switch firewall",
        "nordwgd-killswitch": "block traffic early in boot when nordwgd's lockdown is on",
        "nordwgctl": "control nordwgd over D-Bus",
        "nordwgd.toml": "configuration of nordwgd",
        "nordwgd-tray": "tray icon and menu for nordwgd",
    }[name]


def _option_label(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"\\fI{roff(str(action.metavar or action.dest))}\\fR"
    flags = ", ".join(f"\\fB{roff(flag)}\\fR" for flag in action.option_strings)
    if action.nargs == 0:
        return flags
    if action.choices is not None and action.metavar is None:
        return f"{flags} {{{roff(','.join(map(str, action.choices)))}}}"
    metavar = action.metavar or action.dest.upper()
    return f"{flags} \\fI{roff(str(metavar))}\\fR"


def options(parser: argparse.ArgumentParser) -> list[str]:
    """A .TP paragraph per argument, in the parser's order (help and subcommands left out)."""
    lines: list[str] = []
    for action in parser._actions:  # argparse has no public list of its arguments
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        lines += [".TP", _option_label(action)]
        text = action.help or ""
        if action.choices is not None and not action.option_strings:
            text = (text + " " if text else "") + "One of: " + ", ".join(map(str, action.choices))
        if isinstance(action, argparse._VersionAction):
            text = text or "show the version and exit"
        lines.append(roff(_sentence(text)) if text else "")
    return lines


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", ")")) else ".")


def usage_line(parser: argparse.ArgumentParser) -> str:
    """The parser's usage as --help prints it, on one line and without "usage: "."""
    return " ".join(parser.format_usage().split()).removeprefix("usage: ")


def synopsis(parser: argparse.ArgumentParser) -> list[str]:
    return [".SH SYNOPSIS", ".nf", roff(usage_line(parser)), ".fi"]


def command_page_start(
    parser: argparse.ArgumentParser, name: str, section: int, title: str
) -> list[str]:
    """A command's page up to its description's first paragraph, taken from its parser."""
    return [
        *header(name, section, title),
        *synopsis(parser),
        ".SH DESCRIPTION",
        roff(_sentence(parser.description or "")),
    ]


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def files_section() -> list[str]:
    lines = [".SH FILES"]
    for path, meaning in FILES:
        lines += [".TP", f"\\fI{roff(path)}\\fR", roff(_sentence(meaning))]
    return lines


def see_also(*pages: str) -> list[str]:
    return [
        ".SH SEE ALSO",
        ", ".join(f"\\fB{roff(p.split('(')[0])}\\fR({p.split('(')[1]}" for p in pages),
    ]


def nordwgd_page() -> str:
    from nordwgd import daemon
    from nordwgd.provider.nordvpn import export

    parser = daemon.build_parser()
    lines = command_page_start(parser, "nordwgd", 8, "System Administration")
    lines += [
        ".PP",
        roff(
            "nordwgd runs as the systemd service nordwgd.service (Type=notify) and owns the "
            "D-Bus name org.nordwgd.Nordwgd1 on the system bus; a call to that name starts it. "
            "It is controlled with nordwgctl(1) or any D-Bus client, authorized by polkit. Its "
            "kill switch is an nftables table that lets nothing leave outside the tunnel while "
            "a connection is wanted, and always when lockdown is on."
        ),
        ".SH OPTIONS",
        *options(parser),
    ]
    export_parser = export.build_parser()
    lines += [
        ".SH COMMANDS",
        ".TP",
        f"\\fB{roff(daemon.EXPORT_COMMAND)}\\fR",
        roff(_sentence(export_parser.description or "")),
        ".RS",
        *options(export_parser),
        ".RE",
        ".SH EXIT STATUS",
        roff("0 on a clean stop, 78 on a configuration error, 1 when it cannot start."),
        *files_section(),
        *see_also("nordwgctl(1)", "nordwgd.toml(5)", "nordwgd-killswitch(8)", "systemctl(1)"),
    ]
    return "\n".join(lines) + "\n"


def killswitch_page() -> str:
    from nordwgd import killswitch

    parser = killswitch.build_parser()
    lines = command_page_start(parser, "nordwgd-killswitch", 8, "System Administration")
    lines += [
        ".PP",
        roff(
            "Run once per boot by nordwgd-killswitch.service, before the network comes up. "
            "When lockdown is on (in the configuration, or as stored by nordwgctl set lockdown) "
            "it installs nordwgd's blocking table; nordwgd replaces the table when it starts. "
            "With lockdown off it does nothing."
        ),
        ".SH OPTIONS",
        *options(parser),
        *files_section(),
        *see_also("nordwgd(8)", "nordwgd.toml(5)"),
    ]
    return "\n".join(lines) + "\n"


def nordwgctl_page() -> str:
    from nordwgd import cli

    parser = cli.build_parser()
    lines = command_page_start(parser, "nordwgctl", 1, "User Commands")
    lines += [
        ".SH OPTIONS",
        *options(parser),
        ".SH COMMANDS",
    ]
    for _name, command in subcommands(parser):
        usage = usage_line(command)
        lines += [".TP", f"\\fB{roff(usage)}\\fR", roff(_sentence(command.description or ""))]
        arguments = options(command)
        if arguments:
            lines += [".RS", *arguments, ".RE"]
    epilog = (parser.epilog or "").strip()
    if epilog:
        lines += [".SH EXIT STATUS"]
        for line in epilog.splitlines():
            match = re.match(r"\s*(\d+)\s+(.*)", line)
            if match:
                lines += [".TP", match.group(1), roff(match.group(2))]
            elif line.strip() and not line.strip().endswith(":"):
                lines.append(roff(line.strip()))
    lines += see_also("nordwgd(8)", "nordwgd.toml(5)", "busctl(1)")
    return "\n".join(lines) + "\n"


def nordwgctl_usage() -> str:
    """The README's nordwgctl block: each command's usage (as --help prints it) and purpose."""
    from nordwgd import cli

    lines = []
    for _name, command in subcommands(cli.build_parser()):
        usage = usage_line(command)
        usage = usage.replace(" [-h]", "")
        purpose = command.description or ""
        if len(usage) > 38:
            lines += [usage, f"{'':<38}  {purpose}".rstrip()]
        else:
            lines.append(f"{usage:<38}  {purpose}".rstrip())
    return "\n".join(lines) + "\n"


def config_table() -> str:
    """The README's table of config keys: name, default and the first sentence of its comment."""
    _, _, keys = config_keys()
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key in keys:
        name = f"{key.section}.{key.name}" if key.section else key.name
        default = f"`{key.default}`" if key.default is not None else "none"
        meaning = re.split(r"(?<=[^.])\. (?=[A-Z])", key.text, maxsplit=1)[0].rstrip(".")
        meaning = meaning.replace("|", "\\|")
        lines.append(f"| `{name}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ConfigKey:
    section: str  # "" for the top level
    name: str
    default: str | None  # None: the key is not set by default
    text: str


def config_keys(path: Path = EXAMPLE_CONFIG) -> tuple[str, list[tuple[str, str]], list[ConfigKey]]:
    """The example config as (introduction, [(section, its text)], keys)."""
    intro: list[str] = []
    sections: list[tuple[str, str]] = []
    keys: list[ConfigKey] = []
    section = ""
    comment: list[str] = []
    started = False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        setting = re.fullmatch(r"#?\s*([a-z_][a-z_0-9]*)\s*=\s*(.+)", line)
        if not line:
            if not started and comment:
                intro += [*comment, ""]
                comment = []
            elif comment and sections and not keys_in(keys, section):
                sections[-1] = (section, " ".join(comment))
                comment = []
            continue
        if line.startswith("[") and line.endswith("]"):
            started = True
            if comment and not intro:
                intro, comment = comment, []
            section = line.strip("[]")
            sections.append((section, ""))
            comment = []
            continue
        if setting and (
            not line.startswith("#") or re.fullmatch(r"#\s[a-z_][a-z_0-9]* = .+", line)
        ):
            started = True
            value = setting.group(2).split("  #")[0].strip()
            default = None if line.startswith("#") else value
            text = " ".join(comment)
            if default is None:
                text = f"{text} Example: {setting.group(1)} = {value}".strip()
            keys.append(ConfigKey(section, setting.group(1), default, text))
            comment = []
            continue
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
    return "\n".join(intro).strip(), sections, keys


def keys_in(keys: Iterable[ConfigKey], section: str) -> bool:
    return any(key.section == section for key in keys)


def config_page() -> str:
    intro, sections, keys = config_keys()
    lines = header("nordwgd.toml", 5, "File Formats")
    lines += [".SH SYNOPSIS", "/etc/nordwgd/nordwgd.toml", ".SH DESCRIPTION"]
    for paragraph in intro.split("\n\n"):
        text = " ".join(part.strip() for part in paragraph.splitlines()).strip()
        if text and not text.startswith("nordwgd configuration:"):
            lines += [roff(text), ".PP"]
    lines += [
        roff(
            "The file is TOML. The keys below are shown with their defaults; the example "
            "file /usr/share/doc/nordwgd/examples/nordwgd.toml.example holds the same text."
        ),
        ".SH KEYS",
    ]
    for section, text in [("", ""), *sections]:
        in_section = [key for key in keys if key.section == section]
        if not in_section:
            continue
        lines.append(f".SS {'[' + section + ']' if section else 'Top level'}")
        if text:
            lines.append(roff(text))
        for key in in_section:
            label = f"\\fB{roff(key.name)}\\fR"
            if key.default is not None:
                label += f" = {roff(key.default)}"
            lines += [".TP", label, roff(key.text)]
    lines += [*files_section(), *see_also("nordwgd(8)", "nordwgctl(1)")]
    return "\n".join(lines) + "\n"


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def parser_of(main: Callable[[list[str]], object]) -> argparse.ArgumentParser:
    """The parser a ``main(argv)`` builds, taken when it parses (nothing else runs)."""
    original = argparse.ArgumentParser.parse_args

    def grab(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> NoReturn:
        raise _Parsed(self)

    argparse.ArgumentParser.parse_args = grab  # type: ignore[method-assign]
    try:
        main([])
    except _Parsed as parsed:
        return parsed.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise RuntimeError(f"{main} did not parse its arguments")


def tray_page() -> str:
    from nordwgd_tray import __main__ as tray

    parser = parser_of(tray.main)
    lines = command_page_start(parser, "nordwgd-tray", 1, "User Commands")
    lines += [
        ".PP",
        roff(
            "It starts with the desktop session (/etc/xdg/autostart/nordwgd-tray.desktop) and "
            "follows nordwgd's state over the system bus; connecting and disconnecting are "
            "authorized by polkit like nordwgctl(1)."
        ),
        ".SH OPTIONS",
        *options(parser),
        *see_also("nordwgctl(1)", "nordwgd(8)"),
    ]
    return "\n".join(lines) + "\n"


PAGES = {
    "nordwgd.8": nordwgd_page,
    "nordwgd-killswitch.8": killswitch_page,
    "nordwgctl.1": nordwgctl_page,
    "nordwgd.toml.5": config_page,
    "nordwgd-tray.1": tray_page,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write nordwgd's man pages.")
    parser.add_argument("--output", type=Path, metavar="DIR")
    parser.add_argument(
        "--readme", action="store_true", help="print the README's nordwgctl block instead"
    )
    parser.add_argument(
        "--readme-config", action="store_true", help="print the README's table of config keys"
    )
    args = parser.parse_args(argv)
    if args.readme:
        print(nordwgctl_usage(), end="")
        return 0
    if args.readme_config:
        print(config_table(), end="")
        return 0
    if args.output is None:
        parser.error("--output is required")
    args.output.mkdir(parents=True, exist_ok=True)
    for name, page in PAGES.items():
        (args.output / name).write_text(page())
        print(f"manpages: {args.output / name}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
