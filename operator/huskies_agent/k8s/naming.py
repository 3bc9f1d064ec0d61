"""Deterministic, valid Kubernetes names and labels from arbitrary story ids."""

from __future__ import annotations

import hashlib
import re

GROUP = "huskies.dev"
VERSION = "v1alpha1"
PLURAL = "storyjobs"
KIND = "StoryJob"

LABEL_STORY = f"{GROUP}/story"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_NODE = f"{GROUP}/node"
LABEL_CLUSTER = f"{GROUP}/cluster"
LABEL_EPOCH = f"{GROUP}/epoch"
ANNOTATION_STORY_ID = f"{GROUP}/story-id"
ANNOTATION_EPOCH = f"{GROUP}/epoch"
#: The exact node id (the node label holds a label-safe form of it).
ANNOTATION_NODE = f"{GROUP}/node"

APP_NAME = "huskies-agent"
COMPONENT_BUILD = "story-build"
#: Placeholder pods of the warm build slots (k8s/warmpod.py).
COMPONENT_WARM = "warm-slot"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]+")


def story_hash(story_id: str) -> str:
    return hashlib.sha256(story_id.encode("utf-8")).hexdigest()[:10]


def storyjob_name(story_id: str, stage: str, node: str, epoch: int) -> str:
    """``story-<slug>-<story hash>-<node hash>-s<stage>-e<epoch>``: a DNS-1123 label (<= 63 chars).

    Unique per run: the hash of the exact id keeps ids that slug alike (``A_1`` and
    ``a-1``) apart; the node hash keeps two installs (two Helm releases in one
    namespace, with pipelines whose story ids collide) apart; the stage and the epoch
    make each stage of each claim its own StoryJob (and Job, which gets the same name),
    so no run ever collides with the leftovers of another.
    """
    suffix = f"{story_hash(story_id)}-{node_hash(node)}-s{_stage_tag(stage)}-e{epoch}"
    room = 63 - len("story-") - len(suffix) - 1
    slug = _NOT_DNS.sub("-", story_id.lower()).strip("-")[: max(0, min(30, room))].strip("-")
    return f"story-{slug}-{suffix}" if slug else f"story-{suffix}"


def node_hash(node: str) -> str:
    """A short digest of a node id (the install's identity) for object names."""
    return hashlib.sha256(node.encode("utf-8")).hexdigest()[:6]


def _stage_tag(stage: str) -> str:
    """``2`` for ``2_current``; a short digest for anything else."""
    head = stage.split("_", 1)[0]
    return head if head.isdigit() and len(head) <= 2 else story_hash(stage)[:4]


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric at both ends) derived from ``value``.

    Values that are already valid pass unchanged; others become a slug plus a hash.
    """
    if len(value) <= 63 and re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?", value):
        return value
    slug = _NOT_LABEL.sub("-", value)[:50].strip("-._")
    digest = story_hash(value)
    return f"{slug}-{digest}" if slug else digest
