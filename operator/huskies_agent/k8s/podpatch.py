"""Patches over the generated build pod spec (pure): a strategic merge, then an RFC 6902 JSON patch.

``build.pod_patch`` is a strategic-merge patch of the PodSpec, the way ``kubectl patch`` and
Buildkite's ``pod-spec-patch`` merge one: maps merge key by key, ``null`` deletes a key, and the
lists Kubernetes merges by a key are merged by that key (containers, initContainers and volumes
by ``name``, a container's ``env`` by ``name`` and ``volumeMounts`` by ``mountPath``...): an item
whose key is already there is merged into it, a new one is appended. Every other list is
replaced, as Kubernetes does (``tolerations``, ``envFrom``, ``args``...). Directives: ``$patch:
replace`` (replace this map, or as a list item: replace the list) and ``$patch: delete`` (delete
this map, or as a list item with the key: delete that item). Others are refused.

``build.pod_json_patch`` is a list of RFC 6902 operations (add, remove, replace, move, copy,
test) over the PodSpec, applied after the merge, for what a merge cannot say (an init container
before ``clone``, an item of a list by position).

Both return a new spec and raise :class:`PatchError` naming the place of a patch that cannot
apply; whether the result is an acceptable build pod is ``podcheck``'s business.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

#: PodSpec lists merged by a key (Kubernetes' patchMergeKey), and a container's.
POD_MERGE_KEYS: dict[str, str] = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "volumes": "name",
    "imagePullSecrets": "name", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
    "schedulingGates": "name", "resourceClaims": "name",
}
CONTAINER_MERGE_KEYS: dict[str, str] = {
    "env": "name", "volumeMounts": "mountPath", "ports": "containerPort", "volumeDevices": "devicePath",
}
CONTAINER_LISTS = frozenset({"containers", "initContainers", "ephemeralContainers"})
PATCH = "$patch"
JSON_PATCH_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})


class PatchError(ValueError):
    """A patch cannot apply; the message names where."""


def strategic_merge(spec: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with the strategic-merge ``patch`` applied (neither is changed)."""
    if not isinstance(patch, Mapping):
        raise PatchError(f"expected a mapping (a PodSpec patch), got {type(patch).__name__}")
    merged = _merge_map(spec, patch, POD_MERGE_KEYS, "")
    return {} if merged is None else merged


def _merge_map(orig: Mapping[str, Any], patch: Mapping[str, Any], keys: Mapping[str, str],
               where: str) -> dict[str, Any] | None:
    """The merged map, or ``None`` for ``$patch: delete``."""
    directive = patch.get(PATCH)
    body = {k: v for k, v in patch.items() if k != PATCH}
    if directive == "delete":
        return None
    if directive == "replace":
        replaced: dict[str, Any] = _strip(body, where)
        return replaced
    if directive is not None:
        raise PatchError(f"{where or 'pod_patch'}: unsupported directive {PATCH}: {directive!r} "
                         "(supported: replace, delete)")
    out = copy.deepcopy(dict(orig))
    for key, value in body.items():
        at = f"{where}.{key}" if where else key
        if key.startswith("$"):
            raise PatchError(f"{at}: unsupported directive (supported: {PATCH}: replace or delete)")
        if value is None:
            out.pop(key, None)
        elif key in keys and isinstance(value, list):
            item_keys = CONTAINER_MERGE_KEYS if key in CONTAINER_LISTS else {}
            out[key] = _merge_list(out.get(key) or [], value, keys[key], item_keys, at)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            merged = _merge_map(out[key], value, {}, at)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = _strip(value, at)
    return out


def _merge_list(orig: Sequence[Any], patch: Sequence[Any], merge_key: str, item_keys: Mapping[str, str],
                where: str) -> list[Any]:
    if any(isinstance(item, Mapping) and item.get(PATCH) == "replace" and len(item) == 1 for item in patch):
        return [_strip(item, f"{where}[{i}]") for i, item in enumerate(patch)
                if not (isinstance(item, Mapping) and item.get(PATCH) == "replace")]
    out = [copy.deepcopy(item) for item in orig]
    for i, item in enumerate(patch):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise PatchError(f"{at}: expected a mapping with {merge_key!r}, got {item!r}")
        if merge_key not in item:
            raise PatchError(f"{at}: needs {merge_key!r}: items of {where.rsplit('.', 1)[-1]} are merged by it")
        key = item[merge_key]
        found = next((n for n, o in enumerate(out) if isinstance(o, Mapping) and o.get(merge_key) == key), None)
        if item.get(PATCH) == "delete":
            if found is None:
                raise PatchError(f"{at}: {PATCH}: delete of {merge_key}={key!r}, which is not there")
            del out[found]
        elif found is None:
            out.append(_strip(item, at))
        else:
            merged = _merge_map(out[found], item, item_keys, f"{where}[{merge_key}={key}]")
            if merged is None:
                del out[found]
            else:
                out[found] = merged
    return out


def _strip(value: Any, where: str) -> Any:
    """A new value from the patch: a copy, refusing directives where there is nothing to merge."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if k == PATCH:
                if v == "replace":
                    continue
                raise PatchError(f"{where}: {PATCH}: {v!r} on something that is not in the pod spec")
            if isinstance(k, str) and k.startswith("$"):
                raise PatchError(f"{where}.{k}: unsupported directive")
            out[k] = _strip(v, f"{where}.{k}")
        return out
    if isinstance(value, list):
        return [_strip(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return copy.deepcopy(value)


# ---------------------------------------------------------------------- RFC 6902

def json_patch(spec: Mapping[str, Any], ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``spec`` with the RFC 6902 operations applied in order (all or nothing)."""
    doc: Any = copy.deepcopy(dict(spec))
    for i, op in enumerate(ops):
        where = f"pod_json_patch[{i}]"
        if not isinstance(op, Mapping):
            raise PatchError(f"{where}: expected an operation {{op, path, ...}}, got {op!r}")
        name = op.get("op")
        if name not in JSON_PATCH_OPS:
            raise PatchError(f"{where}: op must be one of {', '.join(sorted(JSON_PATCH_OPS))}, got {name!r}")
        unknown = set(op) - {"op", "path", "value", "from"}
        if unknown:
            raise PatchError(f"{where}: unknown member(s) {', '.join(sorted(map(str, unknown)))}")
        path = _pointer(op.get("path"), f"{where}.path")
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{where}: {name} needs a value")
        try:
            doc = _apply(doc, str(name), path, op)
        except PatchError as exc:
            raise PatchError(f"{where} ({name} {op.get('path')}): {exc}") from None
    if not isinstance(doc, dict):
        raise PatchError("pod_json_patch: the result is not a PodSpec mapping")
    return doc


def _pointer(text: Any, where: str) -> list[str]:
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise PatchError(f"{where}: expected a JSON pointer such as /containers/0/env, got {text!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in text.split("/")[1:]] if text else []


def _apply(doc: Any, name: str, path: list[str], op: Mapping[str, Any]) -> Any:
    if name == "test":
        if _get(doc, path) != op["value"]:
            raise PatchError("the value differs")
        return doc
    if name in ("move", "copy"):
        source = _pointer(op.get("from"), "from")
        if name == "move" and path[:len(source)] == source and path != source:
            raise PatchError("cannot move a value into itself")
        value = copy.deepcopy(_get(doc, source))
        if name == "move":
            doc = _remove(doc, source)
        return _add(doc, path, value)
    if name == "remove":
        return _remove(doc, path)
    if name == "replace":
        if not path:
            return copy.deepcopy(op["value"])
        _get(doc, path)
        doc = _remove(doc, path)
        return _add(doc, path, copy.deepcopy(op["value"]))
    return _add(doc, path, copy.deepcopy(op["value"]))


def _index(container: list[Any], token: str, *, adding: bool) -> int:
    if token == "-" and adding:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"{token!r} is not a list index")
    index = int(token)
    if index > len(container) or (index == len(container) and not adding):
        raise PatchError(f"index {index} is out of range (the list has {len(container)} items)")
    return index


def _parent(doc: Any, path: list[str]) -> Any:
    if not path:
        raise PatchError("the whole pod spec cannot be the target")
    return _get(doc, path[:-1])


def _get(doc: Any, path: list[str]) -> Any:
    node = doc
    for n, token in enumerate(path):
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"/{'/'.join(path[:n + 1])} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, adding=False)]
        else:
            raise PatchError(f"/{'/'.join(path[:n])} is not a map or a list")
    return node


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _parent(doc, path)
    if isinstance(parent, dict):
        parent[path[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, path[-1], adding=True), value)
    else:
        raise PatchError(f"/{'/'.join(path[:-1])} is not a map or a list")
    return doc


def _remove(doc: Any, path: list[str]) -> Any:
    parent = _parent(doc, path)
    _get(doc, path)
    if isinstance(parent, dict):
        del parent[path[-1]]
    else:
        del parent[_index(parent, path[-1], adding=False)]
    return doc
