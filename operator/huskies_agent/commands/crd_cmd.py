"""``huskies-agent crd``: print the StoryJob CRD (for ``kubectl apply -f -``)."""

from __future__ import annotations

import argparse
from importlib import resources


def crd_text() -> str:
    return resources.files("huskies_agent").joinpath("crds/storyjobs.yaml").read_text()


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print(crd_text(), end="")
    return 0
