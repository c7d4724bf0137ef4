"""Config changes: validate with config.parse_value, store in the index."""

from .config import get_key, parse_value


def set_value(home, key, text):
    value = parse_value(key, text)
    home.index.set_config(key, value)
    home.reload_settings()
    return value


def unset_value(home, key):
    get_key(key)
    home.index.unset_config(key)
    return home.reload_settings().__getattr__(key)
