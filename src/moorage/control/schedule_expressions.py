"""Monitoring schedule expressions and when they fire next (always in UTC): the scheduler's question.

The monitoring library (:mod:`moorage.monitor`) runs one job over one window and never needs to
know when the next one is due, so this parsing lives with the schedule state machine
(:mod:`.monitoring_scheduler`); the window's offsets are the library's
(:mod:`moorage.monitor.common.time_offsets`).

SageMaker's forms:

- ``cron(Minutes Hours Day-of-month Month Day-of-week Year)``, as EventBridge writes cron (six
  fields; ``?`` in one of the two day fields; lists ``a,b``, ranges ``a-b``, steps ``*/n`` and
  ``a/n``; month and weekday names; weekdays 1-7 are SUN-SAT). SageMaker's SDK writes
  ``cron(0 * ? * * *)`` (hourly), ``cron(0 0 ? * * *)`` (daily) and ``cron(0 */N ? * * *)``.
  The EventBridge extras ``L``, ``W`` and ``#`` are refused with a message saying so.
- ``NOW``: a one-off run as soon as the schedule is ready; its window comes from
  ``DataAnalysisStartTime``/``DataAnalysisEndTime``.

moorage's extension, for tests and tight loops: ``rate(N unit)`` with unit ``second(s)``,
``minute(s)``, ``hour(s)`` or ``day(s)`` (EventBridge's rate syntax plus seconds). botocore's
``ScheduleExpression`` shape has no pattern, so boto3 sends it as it is. Rate schedules fire on
multiples of the interval since the Unix epoch: the next fire time is a function of the clock
alone, so a restarted server computes the same one.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from moorage.errors import ValidationException

_MONTHS = {name: i for i, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1)}
_WEEKDAYS = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), start=1)}
_RATE = re.compile(r"^rate\(\s*(\d+)\s+(second|minute|hour|day)s?\s*\)$", re.IGNORECASE)
_CRON = re.compile(r"^cron\((.*)\)$", re.IGNORECASE)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_HORIZON_YEARS = 5  # a cron that matches nothing within this many years never fires


def _field_values(text: str, low: int, high: int, names: dict[str, int] | None, what: str) -> frozenset[int]:
    values: set[int] = set()

    def number(token: str) -> int:
        token = token.strip().upper()
        if names and token in names:
            return names[token]
        if not token.isdigit():
            raise ValidationException(f"Invalid schedule expression: {what} field has {token!r}, not a number"
                                      + (" or a name" if names else "") + ".")
        value = int(token)
        if not low <= value <= high:
            raise ValidationException(f"Invalid schedule expression: {what} value {value} is outside {low}-{high}.")
        return value

    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValidationException(f"Invalid schedule expression: empty entry in the {what} field.")
        cleaned = part.upper()
        for name in names or ():
            cleaned = cleaned.replace(name, "")
        if any(mark in cleaned for mark in ("L", "W", "#")):
            raise ValidationException(
                f"Invalid schedule expression: {what} field {part!r} uses L, W or #, which moorage does not support.")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValidationException(f"Invalid schedule expression: step {step_text!r} in the {what} field.")
            step = int(step_text)
        if base in ("*", "?"):
            start, end = low, high
        elif "-" in base:
            first, last = base.split("-", 1)
            start, end = number(first), number(last)
            if start > end:
                raise ValidationException(f"Invalid schedule expression: range {base!r} in the {what} field.")
        else:
            start = number(base)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int] | None  # None: any day of the month ("?" or "*")
    months: frozenset[int]
    weekdays: frozenset[int] | None  # 1 = Sunday ... 7 = Saturday; None: any
    years: frozenset[int] | None

    @classmethod
    def parse(cls, body: str) -> Cron:
        fields = body.split()
        if len(fields) != 6:
            raise ValidationException(
                f"Invalid schedule expression: cron({body}) needs 6 fields (minutes hours day-of-month month "
                "day-of-week year), as in cron(0 * ? * * *).")
        minute, hour, day, month, weekday, year = fields
        if day not in ("?", "*") and weekday not in ("?", "*"):
            raise ValidationException(
                f"Invalid schedule expression: cron({body}) gives both a day of the month and a day of the week;"
                " use ? in one of them.")
        return cls(
            minutes=_field_values(minute, 0, 59, None, "minutes"),
            hours=_field_values(hour, 0, 23, None, "hours"),
            days=None if day in ("?", "*") else _field_values(day, 1, 31, None, "day-of-month"),
            months=_field_values(month, 1, 12, _MONTHS, "month"),
            weekdays=None if weekday in ("?", "*") else _field_values(weekday, 1, 7, _WEEKDAYS, "day-of-week"),
            years=None if year in ("?", "*") else _field_values(year, 1970, 2199, None, "year"),
        )

    def _day_matches(self, day: dt.datetime) -> bool:
        if self.days is not None and day.day not in self.days:
            return False
        # Python: Monday=0..Sunday=6; cron: Sunday=1..Saturday=7
        return self.weekdays is None or (day.weekday() + 1) % 7 + 1 in self.weekdays

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        """The first matching minute strictly after ``after``."""
        t = after.astimezone(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        limit = t.year + _HORIZON_YEARS
        while t.year <= limit:
            if self.years is not None and t.year not in self.years:
                t = dt.datetime(t.year + 1, 1, 1, tzinfo=dt.UTC)
                continue
            if t.month not in self.months:
                t = (dt.datetime(t.year + 1, 1, 1, tzinfo=dt.UTC) if t.month == 12
                     else dt.datetime(t.year, t.month + 1, 1, tzinfo=dt.UTC))
                continue
            if not self._day_matches(t):
                t = dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = dt.datetime(t.year, t.month, t.day, t.hour, tzinfo=dt.UTC) + dt.timedelta(hours=1)
                continue
            later = [m for m in self.minutes if m >= t.minute]
            if not later:
                t = dt.datetime(t.year, t.month, t.day, t.hour, tzinfo=dt.UTC) + dt.timedelta(hours=1)
                continue
            return t.replace(minute=min(later))
        return None


@dataclass(frozen=True)
class ScheduleExpression:
    """A parsed ``ScheduleExpression``; ``next_after`` is None when it fires no more."""

    text: str
    cron: Cron | None = None
    interval: float | None = None  # seconds, for rate(...)
    one_off: bool = False  # NOW

    @classmethod
    def parse(cls, text: str) -> ScheduleExpression:
        stripped = (text or "").strip()
        if stripped.upper() == "NOW":
            return cls(stripped, one_off=True)
        if match := _RATE.match(stripped):
            amount = int(match.group(1))
            if amount <= 0:
                raise ValidationException(f"Invalid schedule expression {text!r}: the rate must be positive.")
            return cls(stripped, interval=float(amount * _UNIT_SECONDS[match.group(2).lower()]))
        if match := _CRON.match(stripped):
            cron = Cron.parse(match.group(1))
            if cron.next_after(dt.datetime.now(dt.UTC)) is None:
                raise ValidationException(f"Invalid schedule expression {text!r}: it never fires.")
            return cls(stripped, cron=cron)
        raise ValidationException(
            f"Invalid schedule expression {text!r}: use cron(...) as SageMaker writes it (cron(0 * ? * * *) hourly, "
            "cron(0 0 ? * * *) daily), NOW, or moorage's rate(N seconds|minutes|hours|days).")

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        if self.one_off:
            return None
        if self.interval is not None:
            seconds = after.timestamp()
            fire = (int(seconds // self.interval) + 1) * self.interval
            return dt.datetime.fromtimestamp(fire, tz=dt.UTC)
        assert self.cron is not None
        return self.cron.next_after(after)

    def period(self) -> float:
        """Seconds between two fires (the default data window of a schedule without offsets)."""
        if self.interval is not None:
            return self.interval
        return 3600.0
