"""The ``avseg`` command line, generated from plain typed functions.

Each command is a function whose signature and Google-style docstring *are* the interface: parameters without a
default become positional arguments, keyword-only parameters and parameters with a default become ``--options``
(required when they have no default); ``bool`` options become ``--flag/--no-flag``;
``Literal[...]`` options become choices; the ``Args:`` section of the docstring becomes the help text. The table
:data:`COMMANDS` maps command names to ``module:function`` targets, imported only when that command runs, so that
``avseg --help`` stays fast and a heavy optional dependency is only needed by the command that uses it. The
function returns the exit status. Errors of type :class:`~avseg.errors.AVSegError` (bad input a user can fix) are
printed as one line, ``avseg: error: <message>``, with exit status 2 (``ValueError`` and the OS errors that name a
path too: every ``ValueError`` avseg raises names the bad value); ``--debug`` or ``AVSEG_DEBUG=1`` shows the traceback
instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from avseg import __version__
from avseg.errors import AVSegError, AVSegWarning

__all__ = ["COMMANDS", "USER_ERRORS", "Command", "build_parser", "error_line", "main"]


@dataclass(frozen=True)
class Command:
    """One CLI command: its words (``("data", "check")``), the ``module:function`` it runs, and its one-line help."""

    words: tuple[str, ...]
    target: str
    help: str

    def load(self) -> Callable[..., int]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: tuple[Command, ...] = (
    Command(
        ("data", "synth"),
        "avseg.data.synthav.commands:synth",
        "Generate SynthAV, a synthetic audio-visual benchmark, in the Ref-AVS, AVSS and RVOS layouts.",
    ),
    Command(
        ("data", "check"), "avseg.data.check:check", "Validate a dataset tree and report counts and missing files."
    ),
    Command(
        ("data", "references"),
        "avseg.data.synthav.commands:references",
        "Score rules that do not read the expression on a SynthAV's Ref-AVS expressions: the floor of a trained model.",
    ),
    Command(
        ("data", "pretrain-encoders"),
        "avseg.data.synthav.pretrain:pretrain_encoders_command",
        "Pretrain the tiny presets' image transformer and log-mel CNN on SynthAV labels.",
    ),
    Command(
        ("audio", "logmel"),
        "avseg.audio.commands:logmel",
        "Compute the VGGish log-mel examples of a wav or video file and save them as .npy.",
    ),
    Command(
        ("audio", "embed"),
        "avseg.audio.commands:embed",
        "Compute per-second VGGish embeddings of a wav or video file and save them as .npy.",
    ),
    Command(
        ("score",),
        "avseg.metrics.score:score",
        "Score saved predictions (.npz) against ground truth (.npz) with a benchmark's official metric preset.",
    ),
    Command(("models",), "avseg.models.commands:models", "List registered models and presets."),
    Command(("train",), "avseg.train.commands:train", "Train a registered model on a benchmark split."),
    Command(
        ("eval",),
        "avseg.evaluate:evaluate_command",
        "Evaluate a checkpoint on one or more splits of a benchmark and print a table.",
    ),
    Command(
        ("predict",),
        "avseg.predict:predict",
        "Segment the sounding (or referred) objects of a video with a trained model; write mask PNGs and an overlay.",
    ),
    Command(("demo",), "avseg.demo:demo", "Generate SynthAV, train a model, evaluate it and write a report."),
    Command(
        ("app",),
        "avseg.app:app",
        "Start a local web page that segments a video with a trained model and gives its overlay and masks.",
    ),
    Command(
        ("bench",),
        "avseg.bench:bench_command",
        "Measure frames/s and peak memory of a model on a random batch.",
    ),
    Command(
        ("convert", "avsegformer"),
        "avseg.convert.avsegformer:convert",
        "Convert a released AVSegFormer checkpoint (.pth) to an avseg checkpoint folder.",
    ),
    Command(
        ("convert", "tpavi"),
        "avseg.convert.tpavi:convert",
        "Convert a TPAVI checkpoint of the AVSBench code (.pth) to an avseg checkpoint folder.",
    ),
    Command(
        ("convert", "sam2"),
        "avseg.convert.sam2:convert",
        "Convert an official SAM2/SAM2.1 checkpoint (.pt), or the SAM2 of an avseg checkpoint, to the folder avseg's "
        "SAM2 layer loads.",
    ),
    Command(
        ("convert", "auralsam2"),
        "avseg.convert.auralsam2:convert",
        "Convert a released AuralSAM2 fuser checkpoint (.pth) into an avseg checkpoint folder.",
    ),
    Command(
        ("convert", "sa2va"),
        "avseg.convert.sa2va:convert",
        "Convert a released Sa2VA model folder (ByteDance/Sa2VA-1B or -4B) into an avseg checkpoint folder.",
    ),
    Command(
        ("convert", "eemc"),
        "avseg.convert.eemc:convert",
        "Convert the released EEMC checkpoint (.pth) into an avseg checkpoint folder.",
    ),
    Command(
        ("convert", "simtoken"),
        "avseg.convert.simtoken:convert",
        "Convert the released SimToken checkpoint (.pth) into an avseg checkpoint folder.",
    ),
)

GROUP_HELP = {
    "data": "Dataset tools: generate SynthAV, score its reference rules, check a benchmark tree.",
    "audio": "Audio front end: VGGish log-mel examples and embeddings.",
    "convert": "Convert the authors' released checkpoints to avseg checkpoints.",
}


# --------------------------------------------------------------------------------------------------------------------
# Docstring and signature parsing


def _doc_summary(fn: Callable) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _doc_description(fn: Callable) -> str:
    """The docstring without its first paragraph and without the Args/Returns sections."""
    doc = inspect.getdoc(fn) or ""
    paragraphs = doc.split("\n\n")[1:]
    kept = []
    for para in paragraphs:
        if re.match(r"^(Args|Arguments|Returns|Raises|Example|Examples):", para.strip()):
            break
        kept.append(para)
    return "\n\n".join(kept).strip()


def _doc_args(fn: Callable) -> dict[str, str]:
    """Parameter descriptions from a Google-style ``Args:`` section (continuation lines joined)."""
    doc = inspect.getdoc(fn) or ""
    match = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)+)", doc, flags=re.MULTILINE)
    if not match:
        return {}
    out: dict[str, str] = {}
    current = None
    for line in match.group(1).splitlines():
        item = re.match(r"^\s{2,4}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if item:
            current = item.group(1)
            out[current] = item.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _add_parameter(parser: argparse.ArgumentParser, param: inspect.Parameter, tp: Any, help_text: str) -> None:
    tp, optional = _unwrap_optional(tp)
    help_text = help_text.replace("%", "%%")  # argparse %-formats help strings ("25% of" would raise)
    name = param.name
    flag = "--" + name.replace("_", "-")
    required = param.default is inspect.Parameter.empty
    # Keyword-only parameters are options even when required (``--format refavs``); the others are positional.
    positional = required and param.kind != inspect.Parameter.KEYWORD_ONLY
    kwargs: dict[str, Any] = {"help": help_text or None}
    if get_origin(tp) is Literal:
        choices = list(get_args(tp))
        kwargs["choices"] = choices
        kwargs["type"] = type(choices[0])
    elif tp is bool:
        if positional:
            raise TypeError(f"CLI: bool parameter {name!r} needs a default")
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=param.default, help=help_text or None)
        return
    elif tp in (Path, int, float, str):
        kwargs["type"] = tp
    elif get_origin(tp) in (list, tuple, Sequence) and get_args(tp) and get_args(tp)[0] in (Path, int, float, str):
        kwargs["type"] = get_args(tp)[0]
        kwargs["nargs"] = "+" if positional else "*"
    else:
        raise TypeError(f"CLI: unsupported type {tp!r} for parameter {name!r}")
    if positional:
        kwargs.pop("help") if not help_text else None
        parser.add_argument(name, metavar=name.upper(), **kwargs)
    else:
        default = None if required else param.default
        if default is not None and kwargs.get("help"):
            kwargs["help"] += f" (default: {default})"
        parser.add_argument(flag, dest=name, default=default, required=required, **kwargs)
    del optional


def _configure_command(parser: argparse.ArgumentParser, fn: Callable) -> None:
    hints = typing.get_type_hints(fn)
    docs = _doc_args(fn)
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        _add_parameter(parser, param, hints.get(param.name, str), docs.get(param.name, ""))


# --------------------------------------------------------------------------------------------------------------------
# Parser


def build_parser(commands: Sequence[Command] = COMMANDS, *, load: str | None = None) -> argparse.ArgumentParser:
    """Build the parser. Only the command named by ``load`` (space-separated words) imports its function; the others
    get a placeholder sub-parser so that ``avseg --help`` lists them without importing torch."""
    parser = argparse.ArgumentParser(
        prog="avseg",
        description="avseg: audio-visual, referring audio-visual and referring video object segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"avseg {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error instead of its one-line message"
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in commands:
        container = top
        if len(cmd.words) == 2:
            group = cmd.words[0]
            if group not in groups:
                gp = top.add_parser(group, help=GROUP_HELP.get(group), description=GROUP_HELP.get(group))
                groups[group] = gp.add_subparsers(dest=f"{group}_command", metavar="COMMAND", required=True)
            container = groups[group]
        word = cmd.words[-1]
        if load == " ".join(cmd.words):
            fn = cmd.load()
            sub = container.add_parser(
                word,
                help=cmd.help,
                description=(_doc_summary(fn) + "\n\n" + _doc_description(fn)).strip(),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            _configure_command(sub, fn)
            sub.set_defaults(_fn=fn)
        else:
            container.add_parser(word, help=cmd.help, add_help=False)
    return parser


def _find_command(argv: Sequence[str]) -> Command | None:
    words = [a for a in argv if not a.startswith("-")]
    for cmd in COMMANDS:
        if tuple(words[: len(cmd.words)]) == cmd.words:
            return cmd
    return None


def error_line(err: BaseException) -> str:
    """One line for an expected error: OS errors name their path (``FileExistsError`` alone prints a bare errno)."""
    if isinstance(err, OSError) and not isinstance(err, AVSegError) and err.filename is not None:
        reason = err.strerror or type(err).__name__
        return f"{err.filename}: {reason}"
    return str(err) or type(err).__name__


# Bad input a user can fix. AVSegError is avseg's own; ValueError because every ValueError avseg raises names the bad
# value; the OS errors because they name the path at fault (an --out that exists, is a file, cannot be written).
USER_ERRORS = (
    AVSegError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """avseg's own warnings (documented fallbacks) as one ``avseg: warning:`` line; others as Python prints them."""
    if issubclass(category, AVSegWarning):
        print(f"avseg: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _no_weight_loading_bars(quiet: bool) -> Iterator[None]:
    """With ``--quiet``, also hide the bars transformers draws while it loads weights (``Loading weights: 100%``)."""
    if not quiet:
        yield
        return
    saved = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers is first imported
    hf_logging = sys.modules.get("transformers.utils.logging")  # already imported (in-process callers)
    enabled = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = saved
        if enabled:
            hf_logging.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``avseg`` console script.

    ``--debug`` (anywhere on the line) or ``AVSEG_DEBUG=1`` shows the traceback of an expected error instead of its
    one-line message; unexpected errors (bugs) always show their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("AVSEG_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    cmd = _find_command(argv)
    parser = build_parser(load=" ".join(cmd.words) if cmd else None)
    args = parser.parse_args(argv)
    fn = getattr(args, "_fn", None)
    if fn is None:
        parser.print_help()
        return 0 if not argv else 2
    internal = {"_fn", "command", "debug"}
    kwargs = {k: v for k, v in vars(args).items() if k not in internal and not k.endswith("_command")}
    try:
        with warnings.catch_warnings(), _no_weight_loading_bars(bool(kwargs.get("quiet"))):
            warnings.showwarning = _show_warning
            status = fn(**kwargs)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"avseg: error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avseg: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
