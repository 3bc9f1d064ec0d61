"""Finding and reading a story's markdown in the checkout (``.huskies/work/<stage>/``)."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from huskies_agent.pipeline import stages
from huskies_agent.runner.result import ExitCode, RunnerError

WORK_DIR = Path(".huskies") / "work"
#: Story text beyond this many bytes is cut (the prompt also goes to a model).
MAX_STORY_BYTES = 256 * 1024


@dataclass(frozen=True)
class StoryFile:
    path: Path
    #: Path relative to the checkout, for messages and the prompt.
    relative: str
    #: The stage folder the file was found in (may differ from the run's stage).
    found_in: str
    text: str
    truncated: bool

    def fallback_note(self, stage: str) -> str:
        if self.found_in == stage:
            return ""
        return f"story file found in {WORK_DIR / self.found_in}, not in {WORK_DIR / stage}"


def _matches(name: str, story_id: str) -> bool:
    if not name.endswith(".md"):
        return False
    stem = name[: -len(".md")]
    return stem == story_id or (stem.startswith(story_id) and stem[len(story_id)] in "_-")


def _candidates(folder: Path, story_id: str) -> list[Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    found = []
    for entry in entries:
        if not _matches(entry.name, story_id):
            continue
        try:
            mode = entry.lstat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):  # symlinks could point anywhere (e.g. at a mounted secret)
            found.append(entry)
    # An exact "<id>.md" wins over "<id>_slug.md".
    found.sort(key=lambda p: (p.name != f"{story_id}.md", p.name))
    return found


def find_story(checkout: Path, story_id: str, stage: str) -> StoryFile:
    """The story's file, preferring the run's stage folder; raises STORY_NOT_FOUND."""
    order = [stage] + [s for s in stages.ALL_STAGES if s != stage]
    work = checkout / WORK_DIR
    if work.is_symlink():
        raise RunnerError(ExitCode.STORY_NOT_FOUND, f"{WORK_DIR} is a symlink; refusing to read stories")
    for folder_stage in order:
        folder = work / folder_stage
        if folder.is_symlink():
            continue
        for path in _candidates(folder, story_id):
            with path.open("rb") as fh:
                raw = fh.read(MAX_STORY_BYTES + 1)
            truncated = len(raw) > MAX_STORY_BYTES
            text = raw[:MAX_STORY_BYTES].decode("utf-8", errors="replace")
            return StoryFile(
                path=path,
                relative=str(path.relative_to(checkout)),
                found_in=folder_stage,
                text=text,
                truncated=truncated,
            )
    raise RunnerError(
        ExitCode.STORY_NOT_FOUND,
        f"no story file {story_id}.md or {story_id}_*.md under {WORK_DIR / stage} "
        f"(or any other stage folder) on the branch",
    )
