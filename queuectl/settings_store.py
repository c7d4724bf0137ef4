"""Where settings live: data/config.json, a small JSON object of the keys set with `config
set` (every other key has its default). The file is the truth for config: it survives the
index being deleted, corrupted, locked or rebuilt, and `config set` rewrites it whole with
tmp + fsync + rename, so a reader sees the old or the new file, never half of one.

Loading says where the values came from (a note when that is not the file):
- the file: its values, no note;
- no file, but an index written by an older version holds config rows: they are copied
  into the file (then removed from the index), no note;
- no file and a spool without jobs (a new home): defaults, and the file is written
  (`{}`) if data/ exists, so that a missing file later means a lost one;
- no file but jobs in the spool (data/ deleted, or a host-local data/ new beside a shared
  spool): defaults, with a note saying so (`status` and the log repeat it);
- a file that cannot be read (not JSON, not an object, unreadable): ConfigUnreadable, and
  the caller keeps its last good settings (home.Home.settings).
Values are validated by config.Settings; a bad value falls back to its key's default."""

import json
import os

from .config import Settings, get_key, parse_value
from .errors import InvalidConfig

CONFIG_FILE = "config.json"


class ConfigUnreadable(InvalidConfig):
    """data/config.json exists but cannot be read or is not a JSON object."""


def config_path(home):
    return home.path(CONFIG_FILE)


def shown_path(home):
    """config.json's path as messages name it: relative to the home when inside it."""
    path = config_path(home)
    inside = path.startswith(home.home + os.sep)
    return os.path.relpath(path, home.home) if inside else path


def read_file(path):
    """The stored {key: value} of a config file. FileNotFoundError if there is none,
    ConfigUnreadable if it cannot be read or parsed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigUnreadable(f"{exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise ConfigUnreadable(f"{exc.strerror}") from None
    try:
        values = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ConfigUnreadable(f"not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigUnreadable("not a JSON object")
    return values


def write_file(home, values):
    """Replace data/config.json with `values`: tmp + fsync + rename, then fsync data/."""
    home.make_data_dir()
    path = config_path(home)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(home):
    """Settings from data/config.json (see the module docstring); ConfigUnreadable if the
    file exists but cannot be used."""
    try:
        return Settings(read_file(config_path(home)))
    except FileNotFoundError:
        pass
    try:
        migrated = _migrate(home)
    except Exception as exc:     # an old index we cannot read: we cannot tell what it held
        return Settings(note=f"defaults ({shown_path(home)} missing, and the index could "
                             f"not be read for settings: {exc})")
    if migrated is not None:
        return Settings(migrated)
    if home.spool.holds_jobs():
        return Settings(note=f"defaults ({shown_path(home)} missing)")
    if os.path.isdir(home.data_dir):
        try:
            write_file(home, {})       # a new home: from now on a missing file is a lost one
        except OSError:
            pass
    return Settings()


def _migrate(home):
    """Config rows of an index written by an older version (which kept config there):
    copied into data/config.json, then removed from the index. None if there are none.
    Never creates an index."""
    if not os.path.exists(home.index.path):
        return None
    rows = home.index.config()
    if not rows:
        return None
    write_file(home, rows)
    try:
        for key in rows:
            home.index.unset_config(key)
    except Exception:      # harmless: the file wins from now on
        pass
    return rows


def _stored(home):
    """The values config.json holds now (after a migration, if one is due)."""
    try:
        return read_file(config_path(home))
    except FileNotFoundError:
        return dict(load(home).stored)
    except ConfigUnreadable as exc:
        raise ConfigUnreadable(f"cannot read {shown_path(home)} ({exc}); fix or delete "
                               "it, then try again") from None


def set_value(home, key, text):
    """Validate and store one key; returns its typed value."""
    value = parse_value(key, text)
    values = _stored(home)
    values[key] = value
    write_file(home, values)
    home.reload_settings()
    return value


def unset_value(home, key):
    """Back to the default; returns the default."""
    get_key(key)
    values = _stored(home)
    values.pop(key, None)
    write_file(home, values)
    return home.reload_settings().__getattr__(key)
