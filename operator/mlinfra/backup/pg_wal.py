"""PostgreSQL WAL arithmetic and what an archive of it can restore: pure logic, no server, no files.

**Names.** A WAL segment file is ``TTTTTTTTXXXXXXXXYYYYYYYY``: timeline, then the segment number split in two
(``segno // segments_per_id`` and ``segno % segments_per_id``, where ``segments_per_id = 2**32 //
wal_segment_size``), so the same name means another segment when the segment size differs (16 MB by default,
any power of two from 1 MB to 1 GB at initdb). A timeline history file is ``TTTTTTTT.history``; each line
names a parent timeline and the LSN where this timeline branched off it.

**Timelines.** After a promotion the new timeline's first segment is the one holding the switch point (a copy
of the parent's up to that point, then the new timeline's WAL): segment numbers go on, only the timeline
part of the name changes. That is not a gap. With the history files, :func:`wal_gaps` also knows which
timeline each segment number must come from; without them any timeline counts.

**Marks: what a restore point in time needs.** PostgreSQL stops a ``recovery_target_time`` recovery at the
first commit record stamped at or after the target; when the replayed WAL ends before such a commit exists,
recovery fails ("recovery ended before configured recovery target was reached"). A segment's upload time
says nothing about the commits in it, so the archiver writes a *mark*: a tiny transaction whose commit
record is stamped no earlier than a server clock reading ``t`` taken inside it, then archives the segment
holding it. Once that segment and every one before it (back to a base backup's end) is archived, every
target time up to ``t`` is reachable: all commits before ``t`` are replayed and recovery stops at or before
the mark's commit. A mark is recorded as an (empty) object named ``<segment>.<time>.<lsn>.mark`` beside the
segments, so an archive listing alone (names, no downloads) says how far it reaches in time.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MIN_SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 1 << 30
DEFAULT_SEGMENT_SIZE = 16 << 20

_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
_MARK = re.compile(r"^([0-9A-F]{24})\.(\d{8}T\d{6}\.\d{6}Z)\.([0-9A-F]{16})\.mark$")
_MARK_TIME = "%Y%m%dT%H%M%S.%fZ"


class WalError(ValueError):
    """A name, LSN or size that is not what PostgreSQL writes."""


class RestoreRefused(ValueError):
    """The requested restore cannot be done with these backups: the message says why and what can be."""


# --- LSNs and segment names -----------------------------------------------------------------------------


def check_segment_size(size: int) -> int:
    if size < MIN_SEGMENT_SIZE or size > MAX_SEGMENT_SIZE or size & (size - 1):
        raise WalError(f"wal_segment_size must be a power of two from 1 MB to 1 GB, got {size}")
    return size


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` (PostgreSQL's pg_lsn text) as a 64-bit integer."""
    high, sep, low = text.strip().partition("/")
    try:
        if not sep or not high or not low or len(high) > 8 or len(low) > 8:
            raise ValueError
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise WalError(f"not an LSN: {text!r} (expected hex 'X/Y')") from None


def format_lsn(lsn: int) -> str:
    if not 0 <= lsn < 1 << 64:
        raise WalError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_id(size: int) -> int:
    return 0x100000000 // check_segment_size(size)


def segment_of(lsn: int, size: int) -> int:
    """The number of the segment holding the byte at ``lsn`` (PostgreSQL's XLByteToSeg)."""
    return lsn // check_segment_size(size)


def segment_start(segno: int, size: int) -> int:
    return segno * check_segment_size(size)


def segment_name(timeline: int, segno: int, size: int) -> str:
    per_id = segments_per_id(size)
    if not 0 < timeline <= 0xFFFFFFFF or segno < 0:
        raise WalError(f"no segment name for timeline {timeline}, segment {segno}")
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


@dataclasses.dataclass(frozen=True, order=True)
class Segment:
    """A segment file: ordered by segment number, then timeline."""

    segno: int
    timeline: int

    def name(self, size: int) -> str:
        return segment_name(self.timeline, self.segno, size)


def is_segment_name(name: str) -> bool:
    return _SEGMENT.match(name) is not None


def parse_segment(name: str, size: int) -> Segment:
    match = _SEGMENT.match(name)
    if match is None:
        raise WalError(f"not a WAL segment file name: {name!r}")
    timeline, high, low = (int(part, 16) for part in match.groups())
    per_id = segments_per_id(size)
    if timeline == 0 or low >= per_id:
        # e.g. 000000010000000000000100 exists with 16 MB segments (per_id 256) only as the next id's first.
        raise WalError(f"{name!r} is not a segment name for wal_segment_size {size}")
    return Segment(high * per_id + low, timeline)


def history_timeline(name: str) -> int | None:
    """The timeline of a history file name (``00000002.history`` -> 2), else None."""
    match = _HISTORY.match(name)
    return int(match.group(1), 16) if match else None


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file: ``[(parent timeline, LSN where the next timeline branched off it)]``, oldest
    first. Blank lines and ``#`` comments are skipped, as PostgreSQL does."""
    entries: list[tuple[int, int]] = []
    for line in text.splitlines():
        fields = line.split(None, 2)
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2:
            raise WalError(f"malformed timeline history line: {line!r}")
        try:
            parent = int(fields[0])
        except ValueError:
            raise WalError(f"malformed timeline history line: {line!r}") from None
        entries.append((parent, parse_lsn(fields[1])))
    return entries


# --- marks ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mark:
    """Every commit stamped before ``time`` (server clock) is in the WAL before ``lsn``, and a commit stamped
    at or after ``time`` lies at or before ``lsn`` in segment ``segment``: see the module docstring."""

    segment: str
    time: datetime.datetime
    lsn: int

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise WalError("a mark's time must carry a time zone")

    @property
    def name(self) -> str:
        utc = self.time.astimezone(datetime.UTC)
        return f"{self.segment}.{utc.strftime(_MARK_TIME)}.{self.lsn:016X}.mark"

    def to_json(self) -> dict[str, Any]:
        return {"segment": self.segment, "time": self.time.isoformat(), "lsn": format_lsn(self.lsn)}


def parse_mark(name: str) -> Mark | None:
    """The mark a ``.mark`` object name describes, or None for any other name."""
    match = _MARK.match(name)
    if match is None:
        return None
    segment, stamp, lsn = match.groups()
    time = datetime.datetime.strptime(stamp, _MARK_TIME).replace(tzinfo=datetime.UTC)
    return Mark(segment, time, int(lsn, 16))


# --- gaps ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Gap:
    """Segments missing from the archive: ``first_missing`` .. ``last_missing`` (``count`` of them), between
    the archived ``after`` (None: the gap starts where the archive was required to start) and ``before``
    (None: nothing after it was archived)."""

    after: str | None
    before: str | None
    first_missing: str
    last_missing: str
    count: int

    def describe(self) -> str:
        what = (
            f"WAL segment {self.first_missing} is missing"
            if self.count == 1
            else f"WAL segments {self.first_missing} to {self.last_missing} ({self.count}) are missing"
        )
        where = []
        if self.after:
            where.append(f"after {self.after}")
        if self.before:
            where.append(f"before {self.before}")
        return f"{what} from the archive" + (f" ({', '.join(where)})" if where else "")


def _timeline_starts(histories: Mapping[int, str], newest: int, size: int) -> list[tuple[int, int]]:
    """``[(timeline, first segment number)]`` along the newest timeline's history, oldest first. The first
    segment of a timeline is the one holding its switch point."""
    text = histories.get(newest)
    if text is None:
        return [(newest, 0)] if newest == 1 else []
    entries = parse_history(text)
    starts: list[tuple[int, int]] = []
    begin = 0
    for parent, switch in entries:
        starts.append((parent, begin))
        begin = segment_of(switch, size)
    starts.append((newest, begin))
    return starts


def _path(segments: Iterable[Segment], size: int, histories: Mapping[int, str] | None) -> list[tuple[int, int]]:
    """The newest timeline's path (see :func:`_timeline_starts`), or [] without histories."""
    if not histories:
        return []
    newest = max([*(s.timeline for s in segments), *histories])
    return _timeline_starts(histories, newest, size)


def _owner(segno: int, path: list[tuple[int, int]], fallback: int) -> int:
    """The timeline that owns segment number ``segno`` on ``path`` (``fallback`` without a path)."""
    return next((tli for tli, first in reversed(path) if first <= segno), fallback)


def _expected(segments: Sequence[Segment], path: list[tuple[int, int]]) -> dict[int, Segment]:
    """For each archived segment number, the segment a recovery uses: the one of the timeline that owns the
    number on ``path`` (versions on abandoned timelines are dropped), or without a path the newest
    timeline's version."""
    by_segno: dict[int, Segment] = {}
    for seg in sorted(segments):  # by (segno, timeline): the newest timeline wins without a path
        if not path or seg.timeline == _owner(seg.segno, path, seg.timeline):
            by_segno[seg.segno] = seg
    return by_segno


def _archived(
    names: Iterable[str], size: int, histories: Mapping[int, str] | None
) -> tuple[dict[int, Segment], list[tuple[int, int]]]:
    segments = [parse_segment(n, size) for n in names if is_segment_name(n)]
    path = _path(segments, size, histories)
    return _expected(segments, path), path


def wal_gaps(
    names: Iterable[str],
    wal_segment_size: int,
    histories: Mapping[int, str] | None = None,
    start: str | None = None,
) -> list[Gap]:
    """The missing runs of segments among the archived ``names`` (other names, history files and marks
    included, are ignored), from ``start`` (a segment name: the archive must begin there, e.g. the end of
    the oldest base backup) or else from the first archived segment, to the last archived one.

    A new timeline continuing the previous one's numbering is not a gap. ``histories`` maps a timeline to
    the text of its history file: with it, only segments of the timelines on the newest timeline's path
    count, each for the segment numbers it owns.
    """
    size = check_segment_size(wal_segment_size)
    used, path = _archived(names, size, histories)
    numbers = sorted(used)
    first = parse_segment(start, size) if start else None
    if first is not None:
        numbers = [n for n in numbers if n >= first.segno]
    gaps: list[Gap] = []
    previous: Segment | None = None
    expect = first.segno if first is not None else (numbers[0] if numbers else 0)
    for segno in numbers:
        seg = used[segno]
        if segno > expect:
            gaps.append(_gap(previous, seg, expect, segno - 1, size, path))
        previous, expect = seg, segno + 1
    if first is not None and not numbers:
        gaps.append(_gap(None, None, first.segno, first.segno, size, path, first.timeline))
    return gaps


def _gap(
    after: Segment | None,
    before: Segment | None,
    low: int,
    high: int,
    size: int,
    path: list[tuple[int, int]],
    fallback: int | None = None,
) -> Gap:
    # Without histories the timeline of a missing segment is a guess: the one of the segment after the gap
    # (a timeline switch inside the gap is possible, and then the first missing names may be on the parent).
    guess = fallback or (before.timeline if before else after.timeline if after else 1)
    return Gap(
        after=after.name(size) if after else None,
        before=before.name(size) if before else None,
        first_missing=segment_name(_owner(low, path, guess), low, size),
        last_missing=segment_name(_owner(high, path, guess), high, size),
        count=high - low + 1,
    )


def contiguous_end(
    names: Iterable[str], wal_segment_size: int, start_segno: int, histories: Mapping[int, str] | None = None
) -> tuple[int, Gap | None]:
    """The last segment number archived without a hole from ``start_segno`` on (``start_segno - 1`` when
    that one is missing), and the gap that ends the run (None when the run reaches the last archived
    segment)."""
    size = check_segment_size(wal_segment_size)
    used, path = _archived(names, size, histories)
    end = start_segno - 1
    while end + 1 in used:
        end += 1
    later = [n for n in used if n > end]
    if not later:
        return end, None
    nxt = min(later)
    before = used[nxt]
    return end, _gap(used.get(end), before, end + 1, nxt - 1, size, path)


# --- base backups and recoverability -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BaseInfo:
    """What recoverability needs of a base backup's metadata (the dict :func:`postgres.take_base` returns)."""

    id: str
    timeline: int
    start_lsn: int
    stop_lsn: int
    stop_time: datetime.datetime  # the base backup's own mark: a server clock reading after its end
    stop_mark_lsn: int
    wal_segment_size: int
    system_identifier: str

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> BaseInfo:
        try:
            stop_time = datetime.datetime.fromisoformat(str(meta["stop_time"]))
            if stop_time.tzinfo is None:
                raise WalError("stop_time has no time zone")
            return cls(
                id=str(meta.get("label", "")),
                timeline=int(meta["timeline"]),
                start_lsn=parse_lsn(str(meta["start_lsn"])),
                stop_lsn=parse_lsn(str(meta["stop_lsn"])),
                stop_time=stop_time,
                stop_mark_lsn=parse_lsn(str(meta["stop_mark_lsn"])),
                wal_segment_size=check_segment_size(int(meta["wal_segment_size"])),
                system_identifier=str(meta.get("system_identifier", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WalError(f"base backup metadata is incomplete or malformed: {exc}") from None

    @property
    def stop_segno(self) -> int:
        return segment_of(self.stop_lsn, self.wal_segment_size)

    @property
    def stop_segment(self) -> str:
        return segment_name(self.timeline, self.stop_segno, self.wal_segment_size)

    @property
    def mark(self) -> Mark:
        segno = segment_of(self.stop_mark_lsn, self.wal_segment_size)
        return Mark(segment_name(self.timeline, segno, self.wal_segment_size), self.stop_time, self.stop_mark_lsn)


@dataclasses.dataclass(frozen=True)
class Point:
    """A point a restore reaches: every commit before ``time`` and all WAL before ``lsn``. ``time`` is None
    when no archived mark vouches for one (the point is then reachable only as "the end", by LSN)."""

    time: datetime.datetime | None
    lsn: int

    def describe(self) -> str:
        when = self.time.isoformat() if self.time else "no known time"
        return f"{when} (LSN {format_lsn(self.lsn)})"

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time.isoformat() if self.time else None, "lsn": format_lsn(self.lsn)}


@dataclasses.dataclass(frozen=True)
class Reach:
    """How far one base backup gets with the archive: from its end (``first``) to ``last`` (the end of the
    contiguous archive after it, timed by the latest mark in it), the marks in that stretch (``marks``, by
    LSN: where a recovery to a target can stop), and the gap that ends the stretch (None: the archive
    simply ends)."""

    base: BaseInfo
    first: Point
    last: Point
    marks: list[Mark]
    gap: Gap | None

    @property
    def last_time(self) -> datetime.datetime | None:
        """The latest target time a recovery can stop at."""
        return self.last.time


def reach(
    base: BaseInfo, names: Sequence[str], histories: Mapping[int, str] | None = None, marks: Iterable[Mark] = ()
) -> Reach:
    """How far ``base`` gets with the archived ``names`` (segments and ``.mark`` names; ``marks`` adds marks
    known otherwise). The base backup's own mark counts once its segment is archived."""
    size = base.wal_segment_size
    end, gap = contiguous_end(names, size, base.stop_segno, histories)
    end_lsn = max(base.stop_lsn, segment_start(end + 1, size))
    known = {m.name: m for m in [*(m for m in map(parse_mark, names) if m is not None), *marks, base.mark]}
    usable = sorted(
        (
            m
            for m in known.values()
            if base.stop_mark_lsn <= m.lsn
            and is_segment_name(m.segment)
            and parse_segment(m.segment, size).segno <= end
        ),
        key=lambda m: m.lsn,
    )
    last_time = max((m.time for m in usable), default=None)
    return Reach(base, Point(base.stop_time, base.stop_lsn), Point(last_time, end_lsn), usable, gap)


@dataclasses.dataclass(frozen=True)
class Recoverability:
    """The window a restore can reach: ``first`` (the oldest base backup's end) to ``last`` (the furthest
    any base backup gets through the contiguous archive after it), and every gap in the archive after the
    oldest base backup."""

    first: Point | None
    last: Point | None
    gaps: list[Gap]

    def to_json(self) -> dict[str, Any]:
        return {
            "first": self.first.to_json() if self.first else None,
            "last": self.last.to_json() if self.last else None,
            "gaps": [dataclasses.asdict(g) for g in self.gaps],
        }


def recoverability(
    bases: Iterable[Mapping[str, Any]],
    names: Iterable[str],
    histories: Mapping[int, str] | None = None,
) -> Recoverability:
    """The first and last recoverability points of the base backups' metadata with the archived ``names``.

    ``last`` is the end of the contiguous archive after a base backup (a gap truncates it); its time is the
    latest archived mark in that stretch (None when there is none: then only a restore to the end reaches
    it). Without base backups nothing is recoverable.
    """
    infos = sorted((BaseInfo.from_meta(m) for m in bases), key=lambda b: b.stop_lsn)
    archived = list(names)
    if not infos:
        return Recoverability(None, None, [])
    reaches = [reach(b, archived, histories) for b in infos]
    best = max(reaches, key=lambda r: (r.last.lsn, r.last_time or infos[0].stop_time))
    oldest = infos[0]
    gaps = wal_gaps(archived, oldest.wal_segment_size, histories, start=oldest.stop_segment)
    return Recoverability(reaches[0].first, best.last, gaps)


def choose_base(bases: Iterable[Mapping[str, Any]], target_time: datetime.datetime | None) -> Mapping[str, Any]:
    """The newest base backup whose end (``stop_time``) is at or before ``target_time`` (the newest of all
    without a target: a restore to the end of the archive)."""
    metas = sorted(bases, key=lambda m: BaseInfo.from_meta(m).stop_lsn)
    if not metas:
        raise RestoreRefused("there is no base backup to restore from")
    if target_time is None:
        return metas[-1]
    _aware(target_time)
    fitting = [m for m in metas if BaseInfo.from_meta(m).stop_time <= target_time]
    if not fitting:
        earliest = BaseInfo.from_meta(metas[0]).stop_time
        raise RestoreRefused(
            f"target time {target_time.isoformat()} is before the earliest recoverability point "
            f"{earliest.isoformat()} (the end of the oldest base backup)"
        )
    return fitting[-1]


def _aware(when: datetime.datetime) -> None:
    if when.tzinfo is None:
        raise RestoreRefused(f"target time {when.isoformat()} has no time zone: give one (e.g. +00:00)")


@dataclasses.dataclass(frozen=True)
class RestorePlan:
    """What a restore of ``base`` will replay: up to the target, or to the end of the contiguous archive
    (``to``); the WAL segments it needs in order (``segments``), the timeline history files, and the mark
    that vouches for the target (``mark``, None when the base backup's own mark or no target). ``files``:
    all of them, what the restore's init container downloads (and :func:`plan_restore` needs again)."""

    base: BaseInfo
    target_time: datetime.datetime | None
    target_lsn: int | None
    to: Point
    segments: list[str]
    histories: list[str]
    mark: str | None

    @property
    def files(self) -> list[str]:
        return [*self.segments, *self.histories, *([self.mark] if self.mark else [])]


def plan_restore(
    base_meta: Mapping[str, Any],
    names: Sequence[str],
    target_time: datetime.datetime | None = None,
    target_lsn: int | None = None,
    histories: Mapping[int, str] | None = None,
) -> RestorePlan:
    """Check that ``base_meta`` with the archived ``names`` reaches the target, or refuse saying what can be
    reached. No target: the end of the archive, refused when a gap cuts the archive short (a restore that
    silently stopped at the gap would lose what comes after it)."""
    if target_time is not None and target_lsn is not None:
        raise RestoreRefused("give a target time or a target LSN, not both")
    base = BaseInfo.from_meta(base_meta)
    got = reach(base, names, histories)
    size = base.wal_segment_size
    gap_text = f": {got.gap.describe()}" if got.gap else ""
    # A recovery to a target stops at the first commit at or after it; the first archived mark at or after
    # the target vouches that one exists, and where: the segments after its own are not needed.
    stop: Mark | None = None
    if target_time is not None:
        _aware(target_time)
        if target_time < base.stop_time:
            raise RestoreRefused(
                f"target time {target_time.isoformat()} is before the end of base backup {base.id}: the "
                f"earliest point this base backup can reach is {base.stop_time.isoformat()}"
            )
        stop = next((m for m in got.marks if m.time >= target_time), None)
        if stop is None:
            last = got.last_time.isoformat() if got.last_time else f"the end of base backup {base.id}"
            hint = "" if got.last_time else " (restore without a target time to reach it)"
            raise RestoreRefused(
                f"target time {target_time.isoformat()} is after the last recoverability point {last}{hint}{gap_text}"
            )
        to = Point(target_time, stop.lsn)
    elif target_lsn is not None:
        if target_lsn < base.stop_lsn:
            raise RestoreRefused(
                f"target LSN {format_lsn(target_lsn)} is before the end of base backup {base.id}: the earliest "
                f"point this base backup can reach is LSN {format_lsn(base.stop_lsn)}"
            )
        # Recovery must read a record at or after the target LSN; a mark guarantees one (the end of the
        # archive does not: its last segment may end in the padding after a segment switch).
        stop = next((m for m in got.marks if m.lsn >= target_lsn), None)
        if stop is None:
            last = f"LSN {format_lsn(got.marks[-1].lsn)}" if got.marks else f"the end of base backup {base.id}"
            hint = "" if got.marks else " (restore without a target to reach it)"
            raise RestoreRefused(
                f"target LSN {format_lsn(target_lsn)} is after the last recoverability point {last}{hint}{gap_text}"
            )
        to = Point(None, target_lsn)
    else:
        if got.gap is not None:
            raise RestoreRefused(
                f"the archive after base backup {base.id} has a gap{gap_text}; the last recoverability point "
                f"is {got.last.describe()}: restore to a target time or LSN before it"
            )
        to = got.last
    if stop is not None:
        end_segno = parse_segment(stop.segment, size).segno
    else:
        end_segno = segment_of(to.lsn - 1, size) if to.lsn > base.stop_lsn else base.stop_segno
    used, _ = _archived(names, size, histories)
    needed = [used[s].name(size) for s in range(base.stop_segno, end_segno + 1) if s in used]
    histories_needed = sorted(n for n in names if history_timeline(n) is not None)
    mark = stop.name if stop is not None and stop != base.mark else None
    return RestorePlan(base, target_time, target_lsn, to, needed, histories_needed, mark)
