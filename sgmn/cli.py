"""`sgmn` command line: synth | inspect | export | pretrain | train | eval | index | query | serve | demo.

Each area registers its own commands (``register(app)`` in its ``cli`` module) so that the
options of a command live next to the code that runs it.
"""

from __future__ import annotations

import importlib
import os

import typer

app = typer.Typer(
    name="sgmn",
    help="Livestreaming product retrieval with SGMN: synthesise data, train, evaluate, index, query, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = (
    "sgmn.data.cli",  # synth, inspect
    "sgmn.export",  # export (a zero-shot model from pretrained weights)
    "sgmn.train.cli",  # train, pretrain
    "sgmn.eval.cli",  # eval
    "sgmn.retrieval.cli",  # index, query
    "sgmn.serve.cli",  # serve
    "sgmn.demo",  # demo
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    # No "Loading weights 103/103" bars from transformers / huggingface_hub on every call (read
    # when they are imported, which happens later). Downloads still show theirs: sgmn/hub.py.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    app()


if __name__ == "__main__":
    main()
