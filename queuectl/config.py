"""Settings: the defaults table, parsing and range checks for every key. Pure: storage is
settings_store's job (data/config.json); this module only says what a valid value is.

Invariant: a Settings object only ever holds values that passed `parse_value`."""


from .errors import InvalidConfig

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Upper bounds: every value must be one the code can represent. A duration is at most 100
# years, so now + delay is always a valid time (backoff_max 1e12 once raised "year 33715 is
# out of range" in every failure, and recovery never got past it).
MAX_SECONDS = 100 * 365 * 86400

SHARED_CHOICES = ("auto", "yes", "no")


class Key:
    """One setting: its default, kind (int, number, choice, optional_number,
    optional_path), lower bound and meaning. A plain class, not a dataclass: building
    dataclasses costs every `queuectl enqueue` a millisecond at import."""
    __slots__ = ("name", "default", "kind", "minimum", "exclusive_min", "help", "maximum",
                 "choices")

    def __init__(self, name, default, kind, minimum=None, exclusive_min=False, help="",
                 maximum=None, choices=LOG_LEVELS):
        self.name, self.default, self.kind = name, default, kind
        self.minimum, self.exclusive_min, self.help = minimum, exclusive_min, help
        self.maximum = maximum
        self.choices = choices


KEYS = {k.name: k for k in (
    Key("max_retries", 3, "int", 0, help="retries before a job goes to dead/", maximum=1000),
    Key("backoff_base", 2, "number", 1, help="retry delay = base ** attempts, s",
        maximum=1000),
    Key("backoff_max", 3600, "number", 0, help="cap on the retry delay, seconds",
        maximum=MAX_SECONDS),
    Key("log_level", "INFO", "choice", help="one of " + ", ".join(LOG_LEVELS)),
    Key("worker_poll_interval", 1, "number", 0, True,
        help="safety-net rescan of the spool, s", maximum=86400),
    Key("job_timeout", None, "optional_number", 0, True,
        help="default job time limit, s, or none", maximum=MAX_SECONDS),
    Key("shutdown_timeout", 30, "number", 0, help="grace for a running job at stop, s",
        maximum=MAX_SECONDS),
    Key("settle_seconds", 2, "number", 0,
        help="wait before rejecting a bad drop-in, s", maximum=86400),
    Key("max_job_bytes", 1048576, "int", 2, help="largest job file accepted, bytes",
        maximum=64 << 20),
    Key("completed_retention", 604800, "optional_number", 0, True,
        help="keep completed jobs this long, s/none", maximum=MAX_SECONDS),
    Key("metrics_textfile", None, "optional_path",
        help="Prometheus text file (none: off)"),
    Key("spool_shared", "auto", "choice", choices=SHARED_CHOICES,
        help="shared by hosts: auto, yes, no"),
    # Job semantics (issue 11): the exit-code retry policy and the hooks.
    Key("retry_exit_codes", "75", "codes",
        help="exit codes that always retry"),
    Key("permanent_exit_codes", "64-78", "codes",
        help="exit codes that go to dead/ at once"),
    Key("on_finish", None, "optional_path",
        help="command run when a job ends"),
    Key("on_dead", None, "optional_path",
        help="command run when a job lands in dead/"),
    Key("hook_timeout", 30, "number", 0, True,
        help="seconds a hook may run", maximum=86400),
)}


def _number(text, key):
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    try:
        return int(text)
    except (TypeError, ValueError):
        pass
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InvalidConfig(f"{key.name} must be a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidConfig(f"{key.name} must be a finite number, got {text!r}")
    return value


def _looks_int(text):
    if isinstance(text, bool):
        return False
    if isinstance(text, int):
        return True
    try:
        int(str(text))
    except ValueError:
        return False
    return True


def _check_range(value, key):
    if key.minimum is None:
        return value
    if key.exclusive_min and value <= key.minimum:
        raise InvalidConfig(f"{key.name} must be greater than {key.minimum:g}, got {value!r}")
    if value < key.minimum:
        raise InvalidConfig(f"{key.name} must be at least {key.minimum:g}, got {value!r}")
    if key.maximum is not None and value > key.maximum:
        raise InvalidConfig(f"{key.name} must be between {key.minimum:g} and {key.maximum:d}"
                            f"{_in_words(key)}, got {value!r}")
    return value


def _in_words(key):
    return " (100 years)" if key.maximum == MAX_SECONDS else ""


def parse_value(name, text):
    """Validate a value given as text (from the CLI) or as stored; returns the typed value."""
    key = get_key(name)
    if key.kind in ("optional_number", "optional_path") and \
            (text is None or str(text).strip().lower() in ("none", "null", "")):
        return None
    if key.kind == "choice":
        for choice in key.choices:
            if str(text).lower() == choice.lower():
                return choice
        raise InvalidConfig(f"{name} must be one of {', '.join(key.choices)}, got {text!r}")
    if key.kind == "optional_path":
        return str(text)
    if key.kind == "codes":
        return format_codes(parse_codes(text, name))
    if key.kind == "int" and not _looks_int(text):
        raise InvalidConfig(f"{name} must be an integer, got {text!r}")
    value = _number(text, key)
    if key.kind == "int" and not isinstance(value, int):
        raise InvalidConfig(f"{name} must be an integer, got {text!r}")
    return _check_range(value, key)


def parse_codes(text, name="exit codes"):
    """'64-78,2' (or a list of ints) -> a frozenset of exit codes 0-255; '' or none: empty."""
    if isinstance(text, (list, tuple)):
        parts = [str(p) for p in text]
    else:
        value = "" if text is None else str(text).strip()
        parts = [] if value.lower() in ("", "none") else value.split(",")
    codes = set()
    for part in parts:
        low, _, high = part.strip().partition("-")
        try:
            low_n = int(low)
            high_n = int(high) if high else low_n
        except ValueError:
            raise InvalidConfig(f"{name} must be exit codes or ranges like 75 or 64-78,100, "
                                f"got {text!r}") from None
        if not 0 <= low_n <= high_n <= 255:
            raise InvalidConfig(f"{name} must be exit codes 0-255 (ranges low-high), "
                                f"got {text!r}")
        codes.update(range(low_n, high_n + 1))
    return frozenset(codes)


def format_codes(codes):
    """A set of codes -> its shortest text: '64-74,76-78'."""
    ordered = sorted(codes)
    runs = []
    for code in ordered:
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"


def get_key(name):
    try:
        return KEYS[name]
    except KeyError:
        raise InvalidConfig(f"unknown config key {name!r}; valid keys: "
                            f"{', '.join(sorted(KEYS))}") from None


FOREIGN_MARGIN = 30
FOREIGN_MIN_SECONDS = 60


def foreign_after(settings):
    """Seconds after which a file in a job directory that can never be a job (hidden, or
    not *.json) counts as forgotten: 30 x settle_seconds (a tool staging `.x.json.part`
    renames it well within that), at least a minute."""
    return max(FOREIGN_MIN_SECONDS, FOREIGN_MARGIN * settings.settle_seconds)


class Settings:
    """Every key's effective value; attribute access (settings.max_retries). `note` says why
    they are not what data/config.json holds (None when they are)."""

    def __init__(self, stored=None, note=None):
        self.__dict__["note"] = note
        self._stored = {}
        for name, raw in (stored or {}).items():
            if name in KEYS:
                try:
                    self._stored[name] = parse_value(name, raw)
                except InvalidConfig:
                    pass  # a hand-edited bad value falls back to the default
        self._values = {name: self._stored.get(name, key.default) for name, key in KEYS.items()}

    def __getattr__(self, name):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def stored(self):
        """The valid values that were stored (not the defaults)."""
        return dict(self._stored)

    def rows(self):
        """(key, value, is_default, help) for every key, sorted."""
        return [(name, self._values[name], name not in self._stored, KEYS[name].help)
                for name in sorted(KEYS)]
